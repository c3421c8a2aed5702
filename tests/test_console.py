"""What a person sees: `console.train_line`, `console.duration`, the `Console` progress
callback, and the command's console against its `<workdir>/train.log`.

The formatting tests feed hand-made values and events; the last two run
`run.py` on the smoke config in a child process.
"""

import io
import os
import re
import subprocess
import sys

import jax
import pytest

from mlb_jax import console

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSL_INFO = re.compile(r'^I\d{4} \d\d:\d\d:\d\d')  # absl's prefix of an INFO record, e.g. 'I1201 21:46:40.244 ...'


# ----------------------------------------------------------------------------------------------
# train_line and duration.


def test_train_line_with_scales_of_every_modality():
  means = {'loss': 1.23456, 'acc_fused': 0.8126, 'acc_audio': 0.5, 'score_audio': 0.3, 'ratio_audio': 1.2,
           'scale_audio': 0.95149, 'scale_video': 1.30351, 'grad_norm_fusion': 3.0}
  assert (console.train_line(400, 800, means, 38.24, 600.0) ==
          'step 400/800 (50%)  loss 1.2346  acc fused 0.813  k audio 0.951 video 1.304  38.2 steps/s  ETA 10:00')


def test_train_line_three_modalities_in_their_order_and_an_eta_in_hours():
  means = {'loss': 0.5, 'acc_fused': 1.0, 'scale_audio': 1.0, 'scale_video': 2.0, 'scale_text': 0.5}
  assert (console.train_line(1, 3, means, 0.04, 3723.0) ==
          'step 1/3 (33%)  loss 0.5000  acc fused 1.000  k audio 1.000 video 2.000 text 0.500  0.0 steps/s  '
          'ETA 1:02:03')


def test_train_line_without_scales_or_eta():
  """A method that scales nothing (joint) has no `scale_<m>`: no 'k' part; no ETA when none is known."""
  means = {'loss': 2.0, 'acc_fused': 0.125, 'acc_audio': 0.25, 'score_audio': 0.2, 'ratio_audio': 1.0}
  line = console.train_line(7, 7, means, 10.0, None)
  assert line == 'step 7/7 (100%)  loss 2.0000  acc fused 0.125  10.0 steps/s'
  assert ' k ' not in line and 'ETA' not in line


@pytest.mark.parametrize('seconds, text', [
    (0, '0:00'), (-5, '0:00'), (59.4, '0:59'), (59.6, '1:00'), (61, '1:01'), (599, '9:59'),
    (3599.4, '59:59'), (3600, '1:00:00'), (3723, '1:02:03'), (36000 + 61, '10:01:01')])
def test_duration(seconds, text):
  assert console.duration(seconds) == text


# ----------------------------------------------------------------------------------------------
# Console: one line per event, per run.


def _means(loss, scales=True):
  out = {'loss': loss, 'acc_fused': 0.5, 'acc_audio': 0.25, 'acc_video': 0.75}
  if scales:
    out.update(scale_audio=0.9, scale_video=1.1)
  return out


def _val(acc):
  return {h: {'accuracy': acc, 'ece': 0.1, 'loss': 1.0} for h in ('fused', 'audio', 'video')}


def events(runs, total=6, log_every=2, eval_every=3, start=0, steps_per_sec=10.0):
  """The event sequence `loop._train` emits for a group of `runs` from `start` to `total`."""
  base = {'runs': list(runs), 'total': total}
  out = [{'event': 'start', 'step': start, **base, 'what': 'mlb, 100 parameters'}]
  for step in range(start + 1, total + 1):
    if step % log_every == 0 or step == total:
      out.append({'event': 'train', 'step': step, **base, 'steps_per_sec': steps_per_sec,
                  'means': [_means(1.0 + step / 100 + r) for r in range(len(runs))]})
    if step % eval_every == 0 or step == total:
      out.append({'event': 'val', 'step': step, **base, 'val': [_val(0.1 * step) for _ in runs],
                  'best': [{'step': step, 'accuracy': 0.1 * step} for _ in runs]})
  return out


def printed(con):
  return con.stream.getvalue().splitlines()


def test_console_prints_one_line_per_train_and_val_event_never_twice():
  con = console.Console(stream=io.StringIO(), bar=False)
  for e in events(['seed 0']):
    con(e)
  lines = printed(con)
  assert len(lines) == len(set(lines)), lines
  assert lines[0].startswith('training seed 0: mlb, 100 parameters; steps 1..6')
  train = [line for line in lines if line.startswith('step ') and 'val accuracy' not in line]
  val = [line for line in lines if 'val accuracy' in line]
  assert [line.split()[1] for line in train] == ['2/6', '4/6', '6/6']
  assert val == ['step 3  val accuracy fused 0.3000  audio 0.3000  video 0.3000  (best 0.3000 at step 3)',
                 'step 6  val accuracy fused 0.6000  audio 0.6000  video 0.6000  (best 0.6000 at step 6)']
  assert len(lines) == 1 + 3 + 2
  # The ETA of one command: what is left of this run at the reported rate.
  assert train[0] == ('step 2/6 (33%)  loss 1.0200  acc fused 0.500  k audio 0.900 video 1.100  10.0 steps/s  '
                      'ETA 0:00')
  assert not any(line.startswith('[') for line in lines)


def test_console_resumed_run_and_several_seeds_one_line_each():
  con = console.Console(stream=io.StringIO(), bar=False)
  con({'event': 'resumed', 'step': 2, 'best': [{'step': 2, 'accuracy': 0.2}] * 2})
  for e in events(['seed_0', 'seed_1'], total=8, start=2, log_every=2, eval_every=4, steps_per_sec=0.5):
    con(e)
  lines = printed(con)
  assert lines[0] == 'resumed from step 2'
  assert lines[1].startswith('training seed_0, seed_1: ') and lines[1].endswith('steps 3..8')
  assert len(lines) == len(set(lines)), lines
  for seed in ('seed_0', 'seed_1'):
    mine = [line for line in lines if line.startswith(f'{seed}: ')]
    assert [line.split()[2] for line in mine if 'val accuracy' not in line] == ['4/8', '6/8', '8/8']
    assert [line.split()[2] for line in mine if 'val accuracy' in line] == ['4', '8']
  assert len(lines) == 2 + 2 * 3 + 2 * 2
  first = next(line for line in lines if line.startswith('seed_1: step 4/8'))
  assert 'loss 2.0400' in first and 'ETA 0:08' in first  # seed_1's own means; (8 - 4) / 0.5 s left


def test_console_early_stop_keeps_the_seed_prefix_and_closes_the_bar():
  con = console.Console(stream=io.StringIO(), bar=True)
  con({'event': 'start', 'step': 0, 'runs': ['seed_0', 'seed_1'], 'total': 100, 'group_size': 2, 'what': 'mlb'})
  stop = {'event': 'stopped', 'step': 40, 'total': 100, 'group_size': 2, 'patience': 3, 'head': 'fused'}
  con({**stop, 'runs': ['seed_0'], 'best': [{'step': 28, 'accuracy': 0.5}], 'remaining': 1})
  assert con._bar is not None  # seed_1 trains on
  con({**stop, 'step': 60, 'runs': ['seed_1'], 'best': [{'step': 48, 'accuracy': 0.625}], 'remaining': 0})
  assert con._bar is None
  assert [line for line in printed(con) if 'stopped' in line] == [
      'seed_0: stopped early at step 40: 3 validations without a better fused val accuracy than 0.5000 (step 28)',
      'seed_1: stopped early at step 60: 3 validations without a better fused val accuracy than 0.6250 (step 48)']


class Clock:
  def __init__(self, now):
    self.now = now

  def time(self):
    return self.now


def test_console_of_an_experiment_prefixes_the_run_and_counts_the_whole_experiment(monkeypatch):
  clock = Clock(1000.0)
  monkeypatch.setattr(console, 'time', clock)
  con = console.Console(stream=io.StringIO(), bar=False, runs=3)
  seen = []
  for index, name in enumerate(['mlb seed_0', 'joint seed_0', 'ogm seed_0']):
    con.begin_run(name)
    clock.now = 1000.0 + 100.0 * (2 * index + 1)  # halfway through run index: 100, 300, 500 s in
    con({'event': 'start', 'step': 0, 'runs': ['seed 0'], 'total': 100, 'what': name})
    con({'event': 'train', 'step': 50, 'runs': ['seed 0'], 'total': 100, 'steps_per_sec': 10.0,
         'means': [_means(1.0, scales=index != 1)]})
    con({'event': 'val', 'step': 100, 'runs': ['seed 0'], 'total': 100, 'val': [_val(0.5)],
         'best': [{'step': 100, 'accuracy': 0.5}]})
    con.end_runs(1)
    lines = printed(con)[len(seen):]
    seen += lines
    assert len(lines) == 3 and all(line.startswith(f'[{index + 1}/3 {name}] ') for line in lines), lines
  train = [line for line in seen if 'steps/s' in line]
  # Run 1 of 3, half done after 100 s: 1/6 of the experiment, 500 s to go (not the run's own 5 s).
  assert train[0] == ('[1/3 mlb seed_0] step 50/100 (50%)  loss 1.0000  acc fused 0.500  k audio 0.900 '
                      'video 1.100  10.0 steps/s  ETA 8:20')
  # Run 2: half of the experiment after 300 s, 300 s to go; joint scales nothing.
  assert train[1] == '[2/3 joint seed_0] step 50/100 (50%)  loss 1.0000  acc fused 0.500  10.0 steps/s  ETA 5:00'
  # The last run: what is left of it, (100 - 50) / 10 s.
  assert train[2].endswith('10.0 steps/s  ETA 0:05') and train[2].startswith('[3/3 ogm seed_0] ')
  assert len(seen) == len(set(seen))


# ----------------------------------------------------------------------------------------------
# The command: progress on the console, every log record in <workdir>/train.log.


def _env():
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}  # let JAX probe its backends
  env.update(PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
  if jax.config.jax_compilation_cache_dir:
    env.update(JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return env


def _train(*args):
  return subprocess.run([sys.executable, 'run.py', '--config=configs/synthetic.py:smoke', *args], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=600)


def _chatter(text):
  return [line for line in text.splitlines()
          if ABSL_INFO.match(line) or 'INFO' in line or 'libtpu' in line or "backend 'tpu'" in line]


def test_command_console_shows_progress_and_train_log_the_records(tmp_path):
  workdir = str(tmp_path / 'w')
  proc = _train(f'--workdir={workdir}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _chatter(proc.stdout) == [] and _chatter(proc.stderr) == [], (proc.stdout, proc.stderr[-3000:])
  out = proc.stdout.splitlines()
  assert len(out) == len(set(out)), out
  assert [line.split()[1] for line in out if line.startswith('step ') and 'steps/s' in line] == ['1/2', '2/2']
  assert len([line for line in out if 'val accuracy' in line]) == 1
  assert out[-1].startswith('mlb: best step 2; test accuracy fused ')
  assert out[-1].endswith(os.path.join(workdir, 'results.json'))
  with open(os.path.join(workdir, 'train.log')) as f:
    log = f.read()
  assert ' INFO ' in log
  assert 'test accuracy (checkpoint step 2)' in log  # the loop's own record
  assert 'checkpoint' in log.lower() and 'orbax' in log.lower()  # and the libraries' ones

  # --verbose: every record on the console (here re-evaluating the best checkpoint).
  proc = _train(f'--workdir={workdir}', '--mode=eval', '--verbose')
  assert proc.returncode == 0, proc.stderr[-3000:]
  info = [line for line in proc.stderr.splitlines() if ABSL_INFO.match(line)]
  assert any('test accuracy (checkpoint step 2)' in line for line in info), proc.stderr[-3000:]
  assert len(info) > 5
