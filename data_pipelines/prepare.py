"""Decode a raw dataset once into TFDS ArrayRecord files for training.

  python -m data_pipelines.prepare --dataset=cremad --raw_dir=/data/CREMA-D --out_dir=/data/prepared
  python -m data_pipelines.prepare --dataset=ave --raw_dir=/data/AVE_Dataset --out_dir=/data/prepared --skip_bad
  python -m data_pipelines.prepare --dataset=ucf101 --raw_dir=/data/UCF101 --out_dir=/data/prepared --num_workers=2

The dataset lands in <out_dir>/<dataset>/<version>/ (built under a temporary
name and moved into place when complete); train with
`--config.data.dir=<out_dir>`. A file that cannot be used stops the build with
an error naming it; with --skip_bad it is left out and listed, with the reason,
in skipped.tsv next to the data.
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
from data_pipelines.tfds_builders import EXCLUDED_FILE, SKIPPED_FILE

BUILDERS = {
    'cremad': cremad.Builder,
    'ave': ave.Builder,
    'ucf101': ucf101.Builder,
}


def prepare(dataset: str, raw_dir: str, out_dir: str, *, skip_bad: bool = False, num_workers: int = 0,
            overwrite: bool = False, progress: bool = True) -> str:
  """Builds `dataset` from `raw_dir` into `out_dir`; returns the dataset directory.

  `progress=False` hides the per-split progress bar and TFDS's own bars
  (`tfds.disable_progress_bar`, process-wide).

  Raises:
    ValueError: unknown dataset name.
    FileNotFoundError: `raw_dir` or a folder of the layout is missing.
    FileExistsError: the dataset is already there and `overwrite` is False.
    media.BadInput: an unusable file (without `skip_bad`); names the file.
  """
  if dataset not in BUILDERS:
    raise ValueError(f"unknown dataset '{dataset}'; expected one of {sorted(BUILDERS)}")
  if not os.path.isdir(raw_dir):
    raise FileNotFoundError(f'{raw_dir}: no such raw dataset folder (--raw_dir)')
  builder = BUILDERS[dataset](data_dir=out_dir, file_format='array_record', skip_bad=skip_bad,
                              num_workers=num_workers, progress=progress)
  path = os.fspath(builder.data_path)
  if os.path.isfile(os.path.join(path, 'dataset_info.json')) and not overwrite:
    raise FileExistsError(f'{path}: already prepared; pass --overwrite to rebuild it')
  if not progress:
    tfds.disable_progress_bar()
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.path.abspath(raw_dir), download_mode=mode))
  return path


_DATASET = flags.DEFINE_enum('dataset', None, sorted(BUILDERS), 'Which dataset to prepare.')
_RAW_DIR = flags.DEFINE_string('raw_dir', None, 'The raw dataset folder in its published layout.')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Where to write <dataset>/<version>/ (config.data.dir).')
_SKIP_BAD = flags.DEFINE_bool('skip_bad', False, 'Skip unusable files and list them in skipped.tsv.')
_NUM_WORKERS = flags.DEFINE_integer('num_workers', 0, 'Decoding processes (0: this process).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Rebuild a dataset that is already prepared.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # TFDS draws one bar per split and one per shuffle; the builders draw one per split, in clips.
  tfds.disable_progress_bar()
  start = time.time()
  try:
    path = prepare(_DATASET.value, _RAW_DIR.value, _OUT_DIR.value, skip_bad=_SKIP_BAD.value,
                   num_workers=_NUM_WORKERS.value, overwrite=_OVERWRITE.value)
  except (BadInput, FileNotFoundError, FileExistsError, ValueError) as e:
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
  return 0


if __name__ == '__main__':
  flags.mark_flags_as_required(['dataset', 'raw_dir', 'out_dir'])
  app.run(main)
