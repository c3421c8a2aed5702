"""Decode a raw dataset once into TFDS ArrayRecord files for training.

  python -m data_pipelines.prepare --dataset=cremad --raw_dir=/data/CREMA-D --out_dir=/data/prepared
  python -m data_pipelines.prepare --dataset=ave --raw_dir=/data/AVE_Dataset --out_dir=/data/prepared --skip_bad
  python -m data_pipelines.prepare --dataset=ucf101 --raw_dir=/data/UCF101 --out_dir=/data/prepared --num_workers=2

The dataset lands in <out_dir>/<dataset>/<version>/ (built under a temporary
name and moved into place when complete); train with
`--config.data.dir=<out_dir>`. The raw folder is checked against the
dataset's published layout and scanned before anything is written. A file that
cannot be used stops the build with an error naming it; with --skip_bad it is
left out and listed, with the reason, in skipped.tsv next to the data.

Exit status: 0 when built, 1 for bad input (an error line naming the folder
or file), 2 for bad flags.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import sys
import time

import tensorflow_datasets as tfds
from absl import app, flags

from data_pipelines import ave, cremad, ucf101
from data_pipelines.media import BadInput
from data_pipelines.tfds_builders import EXCLUDED_FILE, SKIPPED_FILE, Layout

BUILDERS = {
    'cremad': cremad.Builder,
    'ave': ave.Builder,
    'ucf101': ucf101.Builder,
}
# What each --raw_dir must hold, checked before any other work ('/' ends a folder).
LAYOUTS = {
    'cremad': Layout('CREMA-D', ('AudioWAV/', 'VideoFlash/'), 'AudioWAV/*.wav, VideoFlash/*.flv'),
    'ave': ave.LAYOUT,
    'ucf101': ucf101.LAYOUT,
}


def _remove_empty(folders) -> None:
  for folder in folders:
    try:
      os.rmdir(folder)
    except OSError:  # not empty (or already gone): not ours to remove
      pass


def prepare(dataset: str, raw_dir: str, out_dir: str, *, skip_bad: bool = False, num_workers: int = 0,
            overwrite: bool = False, progress: bool = True, num_classes: int | None = None) -> str:
  """Builds `dataset` from `raw_dir` into `out_dir`; returns the dataset directory.

  Before anything is written, `raw_dir` is checked against the published
  layout (`LAYOUTS`) and scanned (`AVBuilder.survey`): a missing part, a file
  that cannot be used (without `skip_bad`) or a wrong class count stops here.
  A failed build leaves nothing in `out_dir` (folders it created are removed)
  and nothing in the temporary directory.

  `progress=False` hides the per-split progress bar and TFDS's own bars
  (`tfds.disable_progress_bar`, process-wide). `num_classes`: the classes the
  build must find; None takes the dataset's (UCF101: `ucf101.NUM_CLASSES`,
  the 51 with audio; the others: their label sets).

  Raises:
    ValueError: unknown dataset name, or a class count other than `num_classes`.
    FileNotFoundError: `raw_dir` or a part of the layout is missing (one line
      naming `raw_dir` and the missing parts).
    FileExistsError: the dataset is already there and `overwrite` is False, or
      `out_dir` is a file.
    media.BadInput: an unusable file (without `skip_bad`); names the file.
  """
  if dataset not in BUILDERS:
    raise ValueError(f"unknown dataset '{dataset}'; expected one of {sorted(BUILDERS)}")
  LAYOUTS[dataset].check(raw_dir)
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise FileExistsError(f'{out_dir}: not a folder (--out_dir)')
  cls = BUILDERS[dataset]
  parents = (out_dir, os.path.join(out_dir, cls.name))
  created = [d for d in parents if not os.path.isdir(d)]
  try:
    kwargs = {} if num_classes is None else {'num_classes': num_classes}
    builder = cls(data_dir=out_dir, file_format='array_record', skip_bad=skip_bad,
                  num_workers=num_workers, progress=progress, **kwargs)
    path = os.fspath(builder.data_path)
    if os.path.isfile(os.path.join(path, 'dataset_info.json')) and not overwrite:
      raise FileExistsError(f'{path}: already prepared; pass --overwrite to rebuild it')
    builder.survey(os.path.abspath(raw_dir))
    if not progress:
      tfds.disable_progress_bar()
    mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.path.abspath(raw_dir), download_mode=mode))
  except BaseException:
    _remove_empty(reversed(created))
    raise
  return path


_DATASET = flags.DEFINE_enum('dataset', None, sorted(BUILDERS), 'Which dataset to prepare.')
_RAW_DIR = flags.DEFINE_string('raw_dir', None, 'The raw dataset folder in its published layout.')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Where to write <dataset>/<version>/ (config.data.dir).')
_SKIP_BAD = flags.DEFINE_bool('skip_bad', False, 'Skip unusable files and list them in skipped.tsv.')
_NUM_WORKERS = flags.DEFINE_integer('num_workers', 0, 'Decoding processes (0: this process).', lower_bound=0)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Rebuild a dataset that is already prepared.')
_NUM_CLASSES = flags.DEFINE_integer(
    'num_classes', None, 'The number of classes the build must find (default: the dataset\'s; UCF101: '
    f'{ucf101.NUM_CLASSES}, the classes whose videos carry audio). Give config.data.num_classes the same.',
    lower_bound=1)
_FLAGS = (_DATASET, _RAW_DIR, _OUT_DIR, _SKIP_BAD, _NUM_WORKERS, _OVERWRITE, _NUM_CLASSES)
_REQUIRED = (_DATASET, _RAW_DIR, _OUT_DIR)
_HELP = ('-h', '-help', '--help', '--helpshort', '--helpfull', '-?')


def usage() -> str:
  """The --help text: this module's docstring and its flags."""
  lines = [__doc__.strip(), '', 'Flags:']
  for holder in _FLAGS:
    flag = flags.FLAGS[holder.name]
    required = ' (required)' if any(holder is r for r in _REQUIRED) else ''
    default = f' (default: {flag.default_as_str})' if flag.default is not None else ''
    lines.append(f'  --{flag.name}: {flag.help}{required}{default}')
  return '\n'.join(lines) + '\n'


def _bad_flags(message: str):
  print(f"error: {' '.join(message.split())}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """Parses `argv` (program name first): --help prints `usage()` and exits 0;
  a bad, missing or unknown flag or a positional argument prints one line and exits 2."""
  if any(arg in _HELP for arg in argv[1:]):
    sys.stdout.write(usage())
    sys.exit(0)
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    _bad_flags(str(e))
  missing = [f'--{holder.name}' for holder in _REQUIRED if holder.value is None]
  if missing:
    _bad_flags(f"missing {', '.join(missing)}")
  if len(rest) > 1:
    _bad_flags(f'unexpected arguments: {rest[1:]}')
  return rest


def main(argv):
  del argv  # parse_flags refuses positional arguments
  # TFDS draws one bar per split and one per shuffle; the builders draw one per split, in clips.
  tfds.disable_progress_bar()
  start = time.time()
  try:
    path = prepare(_DATASET.value, _RAW_DIR.value, _OUT_DIR.value, skip_bad=_SKIP_BAD.value,
                   num_workers=_NUM_WORKERS.value, overwrite=_OVERWRITE.value, num_classes=_NUM_CLASSES.value)
  except (BadInput, OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  meta = dict(tfds.builder_from_directory(path).info.metadata)
  counts = {split: len(ids) for split, ids in meta['splits'].items()}
  total = sum(counts.values())
  seconds = time.time() - start
  print(f'{path}: {counts} ({total} clips, {seconds:.0f} s, {total / max(seconds, 1e-9):.1f} clips/s)')
  print(f"skipped {len(meta['skipped'])} unusable files ({os.path.join(path, SKIPPED_FILE)}); "
        f"excluded {len(meta['excluded'])} by the dataset's rule ({os.path.join(path, EXCLUDED_FILE)})")
  if 'classes' in meta and _DATASET.value == 'ucf101':
    print(f"{len(meta['classes'])} classes with audio: {', '.join(meta['classes'])}")
    if meta.get('missing_classes'):
      print(f"{len(meta['missing_classes'])} classInd.txt classes have no folder in this copy: "
            f"{', '.join(meta['missing_classes'])}")
  return 0


def entry() -> None:
  """The command (`python -m data_pipelines.prepare`, console script `mlb-prepare`):
  exits 0 when built, 1 for bad input, 2 for bad flags."""
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  entry()
