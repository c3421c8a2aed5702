"""Command-line plumbing shared by the commands (training, experiments, data preparation).

absl flags and ml_collections config flags, with three additions:

* `define_config_flag`: a `--config=path[:arg]` flag whose path is looked up
  relative to the current directory first, then relative to the folder holding
  the installed `configs` package, so `--config=configs/synthetic.py` works
  from any directory once the package is installed. A default config is loaded
  only when the command line names none (nothing is read at import time).
* `parse_flags(argv)`: every bad flag, config file or override ends the program
  with exit status 2 and one line on stderr, `error: ...`; `--help` and
  `--helpfull` print help on stdout and exit 0.
* `run(main)`: `absl.app.run(main)` with that parser.

  from mlb_jax import cli
  _CONFIG = cli.define_config_flag('configs/synthetic.py', 'The config file.')
  def main(argv): ...
  def entry(): cli.run(main)
"""

import importlib.util
import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

flags.disclaim_key_flags()  # the flags defined through this module belong to the calling command

USAGE_ERROR = 2  # exit status of a bad command line
_HELP_FLAGS = {'help': True, 'helpshort': True, 'h': True, '?': True, 'helpfull': False}  # name -> short help
_CONFIG_FLAGS = {}  # config flag name -> default path (None: no default)
_command = {'module': None}  # the module whose flags --help lists, set by run()


class UsageError(Exception):
  """A bad command line found by a command itself (exit 2, one line)."""


def configs_root():
  """The folder holding the `configs` package (the checkout, or site-packages), or None."""
  try:
    spec = importlib.util.find_spec('configs')
  except (ImportError, ValueError):
    return None
  if spec is None:
    return None
  locations = list(spec.submodule_search_locations or [])
  if not locations and spec.origin:
    locations = [os.path.dirname(spec.origin)]
  return os.path.dirname(os.path.abspath(locations[0])) if locations else None


def resolve_config_path(spec):
  """`path[:arg]` with path made to exist: as given (relative to the current directory), else
  relative to the folder holding the installed `configs` package. Raises ValueError naming it."""
  path, sep, arg = spec.partition(':')
  if not path:
    raise ValueError('no config file given')
  if os.path.isfile(path):
    return spec
  tried = [os.path.abspath(path)]
  root = configs_root()
  if not os.path.isabs(path) and root is not None:
    candidate = os.path.join(root, path)
    if os.path.isfile(candidate):
      return candidate + sep + arg
    if os.path.abspath(candidate) not in tried:
      tried.append(os.path.abspath(candidate))
  raise ValueError(f"config file '{path}' not found (looked for {' and '.join(tried)})")


class _ResolvingConfigParser(flags.ArgumentParser):
  """Wraps ml_collections' config file parser: the path lookup above first, and a file that fails
  to load is an error now (ml_collections would defer it to the first use of the config)."""

  def __init__(self, parser):
    super().__init__()
    self._parser = parser

  def parse(self, argument):
    if not isinstance(argument, str):  # a ConfigDict set programmatically
      return self._parser.parse(argument)
    config = self._parser.parse(resolve_config_path(argument))
    error = getattr(config, '_error', None)  # ml_collections' placeholder for a config that failed to load
    if type(config).__name__ == '_ErrorConfig' and error is not None:
      raise ValueError(_flatten(error))
    return config

  def flag_type(self):
    return self._parser.flag_type()


def define_config_flag(default=None, help_string='An ml_collections config file (":arg" picks a variant).',
                       name='config'):
  """Defines `--<name>=path[:arg]` and its `--<name>.<field>=value` overrides; returns the flag holder.

  `default` (a path, looked up like the flag's value) is used when the command line names no
  config; its overrides then apply to it. The help text shows it.
  """
  holder = config_flags.DEFINE_config_file(name, None, help_string, lock_config=True)
  flag = flags.FLAGS[name]
  flag.parser = _ResolvingConfigParser(flag.parser)
  if default is not None:
    flag.default_as_str = repr(default)
  else:
    flag.default_as_str = None
  _CONFIG_FLAGS[name] = default
  return holder


def _flatten(text):
  """One line: whitespace runs (newlines included) become one space."""
  return ' '.join(str(text).split())


def _before_double_dash(argv):
  args = list(argv[1:])
  return args[:args.index('--')] if '--' in args else args


def _help_requested(argv):
  """None, or True (short help) / False (--helpfull) when argv asks for help."""
  for arg in _before_double_dash(argv):
    if not arg.startswith('-'):
      continue
    name, _, value = arg.lstrip('-').partition('=')
    if name in _HELP_FLAGS and value.lower() not in ('false', '0', 'no'):
      return _HELP_FLAGS[name]
  return None


def _module_flag_name(module):
  return sys.argv[0] if module == '__main__' else module


def print_help(short=True, module=None, file=None):
  """The command's docstring and its flags (`short`) or every flag."""
  file = file or sys.stdout
  module = module or _command['module'] or '__main__'
  doc = getattr(sys.modules.get(module), '__doc__', None) or f'usage: {os.path.basename(sys.argv[0])} [flags]\n'
  if short:
    flag_help = flags.FLAGS.module_help(_module_flag_name(module))
  else:
    flag_help = flags.FLAGS.get_help()
  file.write(doc.rstrip('\n') + '\n')
  if flag_help:
    file.write('\nflags:\n' + flag_help + '\n')
  for name, default in _CONFIG_FLAGS.items():
    file.write(f'\n--{name}.<field>=<value> overrides a field of the config'
               + (f" (default config {default})" if default else '') + '.\n')
  if short:
    file.write('\nTry --helpfull to get a list of all flags.\n')
  file.flush()


def _config_given(name, args):
  return any(re.match(rf'^-{{1,2}}{re.escape(name)}(=|$)', a) for a in args)


def _overrides(name, args):
  return [a for a in args if re.match(rf'^-{{1,2}}(no)?{re.escape(name)}\.', a)]


def _with_default_configs(argv):
  """argv with `--<name>=<default>` first for every config flag that has a default and is not
  on the command line, so its overrides apply to the default."""
  args = _before_double_dash(argv)
  extra = [f'--{name}={default}' for name, default in _CONFIG_FLAGS.items()
           if default is not None and not _config_given(name, args)]
  return [argv[0], *extra, *argv[1:]]


def _chain(error):
  """error, then its causes, outermost first."""
  seen = []
  while error is not None and error not in seen:
    seen.append(error)
    error = error.__cause__ or error.__context__
  return seen


def _key_message(error):
  """("'trian'", 'Did you mean "train" instead of "trian"?') from ml_collections' KeyError/AttributeError."""
  text = error
  while isinstance(text, BaseException):  # AttributeError(KeyError(...)) nests the message
    text = text.args[0] if len(text.args) == 1 else str(text)
  key, _, hint = str(text).partition('\n')
  return _flatten(key), _flatten(hint)


def error_message(error, argv):
  """One line for an error raised while parsing argv."""
  args = _before_double_dash(argv)
  chain = _chain(error)
  if isinstance(error, flags.UnrecognizedFlagError):
    name = getattr(error, 'flagname', '') or ''
    for config_name, default in _CONFIG_FLAGS.items():
      if name.startswith(config_name + '.') and default is None and not _config_given(config_name, args):
        return f'--{name} overrides a field of --{config_name}, but no --{config_name} is given'
    return _flatten(error)
  keys = [e for e in chain if isinstance(e, (KeyError, AttributeError))]
  if keys:  # a config field that does not exist; the outermost error carries the "did you mean" hint
    key, hint = max((_key_message(e) for e in keys), key=lambda m: bool(m[1]))  # the first with a hint
    overrides = [a for name in _CONFIG_FLAGS for a in _overrides(name, args)]
    culprits = [a for a in overrides if key.strip('\'"') in re.split(r'[.=]', a.lstrip('-'))[1:]] or overrides
    where = f' in {" ".join(culprits)}' if culprits else ''
    return _flatten(f'unknown config field {key}{where}' + (f': {hint}' if hint else ''))
  if isinstance(error, flags.IllegalFlagValueError):
    match = re.match(r'flag --([^=\s]+)=(.*?): (.*)', str(error), re.DOTALL)
    if match:
      name, value, reason = match.groups()
      flag = flags.FLAGS[name] if name in flags.FLAGS else None
      if flag is not None and isinstance(flag.parser, flags.EnumParser):
        return (f"--{name} must be one of {'/'.join(flag.parser.enum_values)}, got '{_flatten(value)}'")
      if flag is not None and isinstance(flag.parser, flags.EnumClassParser):
        return (f"--{name} must be one of {'/'.join(flag.parser.member_names)}, got '{_flatten(value)}'")
      inner = chain[-1]
      if inner is not error:  # e.g. the error a config file's get_config raised, not its traceback
        reason = f'{type(inner).__name__}: {inner}' if isinstance(inner, (TypeError, IndexError)) else str(inner)
      if f'--{name}' in reason:
        return _flatten(reason)
      expected = ''
      if flag is not None and name.split('.', 1)[0] in _CONFIG_FLAGS and flag.parser.flag_type() in (
          'int', 'float', 'bool'):
        expected = f' (expected {flag.parser.flag_type()})'
      return _flatten(f'--{name}={value}{expected}: {reason}')
  inner = chain[-1]
  return _flatten(f'{inner}' if isinstance(inner, (flags.Error, ValueError, OSError))
                  else f'{type(inner).__name__}: {inner}')


def usage_exit(message):
  """Ends the program as a bad command line: `error: message` on stderr, exit status 2."""
  sys.stderr.write(f'error: {_flatten(message)}\n')
  sys.stderr.flush()
  sys.exit(USAGE_ERROR)


def parse_flags(argv):
  """absl flag parsing for `app.run(..., flags_parser=parse_flags)`.

  Help flags print help and exit 0; a bad flag, config file or override exits 2 with one line
  on stderr. Returns the arguments left (the program name first).
  """
  short = _help_requested(argv)
  if short is not None:
    try:
      print_help(short=short)
    except BrokenPipeError:  # `--helpfull | head`
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
  saved, sys.argv = sys.argv, list(argv)  # ml_collections reads the overrides from sys.argv
  try:
    return flags.FLAGS(_with_default_configs(argv))
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError, IndexError) as e:
    usage_exit(error_message(e, argv))
  finally:
    sys.argv = saved


def run(main, argv=None):
  """`absl.app.run(main)` with `parse_flags`; `main`'s module docstring and flags are its --help.

  `main` may raise `cli.UsageError` (or `app.UsageError`) for a bad command line found after
  parsing: one line, exit 2.
  """
  _command['module'] = getattr(main, '__module__', None)

  def checked_main(args):
    try:
      return main(args)
    except (UsageError, app.UsageError) as e:
      usage_exit(str(e))

  app.run(checked_main, argv=argv, flags_parser=parse_flags)
