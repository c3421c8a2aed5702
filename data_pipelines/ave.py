"""AVE (Audio-Visual Event) from its published layout (docs/methods.md#ave).

Raw folder (the `--raw_dir` of prepare; the AVE_Dataset download):
  AVE/<VideoID>.mp4
  trainSet.txt, valSet.txt, testSet.txt   `Category&VideoID&Quality&StartSec&EndSec` per line
                                          (3,339 / 402 / 402 lines)
Each line is one example: the annotated event segment [Start, End) of the
video. An id repeated within a split file (two events, e.g. male and female
speech) keeps its first line, as the reference; the later lines are listed in
`excluded.tsv`. Ids shared between splits (10 train/val, 8 train/test, some
with different labels) are kept, as the reference does. Published counts after
that rule: 3,312 / 401 / 402; trainSet.txt line 64 (VWi2ENBuTbw, segment
[0, 0]) is empty and needs --skip_bad.

28 classes in the reference's code order (`CLASSES`).

A clip must cover its event segment: its audio track and its video must each
last until the segment's end to within `END_TOLERANCE` (0.5 s; for the video,
one frame interval where that is longer), so a 9.8 s download of a [0, 10] s
event is kept but a 0.6 s one is not. A shorter clip stops the build with an
error naming the file, its duration and the segment (with --skip_bad it is
listed in skipped.tsv), rather than being looped and filled from what there is.

Preprocessing (once, at prepare time):
  audio  the container's audio at 16 kHz (channels averaged), cut to the
         segment, looped to 10 s (160,000 samples), clipped to [-1, 1], then
         log(|PSD| + 1e-7) of scipy.signal.spectrogram(nperseg 512, noverlap 353):
         [257, 1004]; no normalisation
  video  the first frame of each second inside the segment, the first 4; a
         shorter segment gets random extra frames of the segment (seeded),
         kept in time order (the reference adds random frames up to 10 and
         loads the first 4 in order); stored as JPEG
At read time: [4, S, S, 3], RandomResizedCrop + flip per frame on train.

Run:
  python -m data_pipelines.prepare --dataset=ave --raw_dir=AVE_Dataset --out_dir=data --skip_bad
"""

import os
import zlib
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import media, spectrogram, splits, tfds_builders
from data_pipelines.common import Dataset
from data_pipelines.prepared import check_config, make_source, open_prepared

NAME = 'ave'
VERSION = '1.0.0'
CLASSES = ('Church bell', 'Male speech, man speaking', 'Bark', 'Fixed-wing aircraft, airplane',
           'Race car, auto racing', 'Female speech, woman speaking', 'Helicopter', 'Violin, fiddle',
           'Flute', 'Ukulele', 'Frying (food)', 'Truck', 'Shofar', 'Motorcycle', 'Acoustic guitar',
           'Train horn', 'Clock', 'Banjo', 'Goat', 'Baby cry, infant cry', 'Bus', 'Chainsaw', 'Cat',
           'Horse', 'Toilet flush', 'Rodents, rats, mice', 'Accordion', 'Mandolin')
SPLIT_FILES = {'train': 'trainSet.txt', 'val': 'valSet.txt', 'test': 'testSet.txt'}
SAMPLE_RATE = 16000
CLIP_SECONDS = 10
NPERSEG, NOVERLAP = 512, 353
NUM_FRAMES = 4
END_TOLERANCE = 0.5  # s: how far before the event segment's end a clip may stop
LAYOUT = tfds_builders.Layout('AVE', ('AVE/',) + tuple(SPLIT_FILES.values()),
                              'AVE/<VideoID>.mp4, ' + ', '.join(SPLIT_FILES.values()))
AUDIO_SHAPE = (1 + NPERSEG // 2, 1 + (SAMPLE_RATE * CLIP_SECONDS - NPERSEG) // (NPERSEG - NOVERLAP))


class Event(NamedTuple):
  id: str          # YouTube video id
  label: int
  start: float     # seconds
  end: float
  line: str        # '<file>:<line number>'
  mp4: str = ''    # filled in by `scan`


def read_annotations(path: str) -> tuple[list[Event], list[tuple[str, str]], list[tuple[str, str]]]:
  """Parses an AVE split file.

  Returns:
    (events, repeats, bad): the first event of every video id in file order;
    ('<file>:<line>', reason) for later lines repeating an id; and
    ('<file>:<line>', problem) for malformed lines (field count, unknown
    category, times that are not numbers, an empty or negative segment).
    A leading `Category&VideoID&...` header line is ignored.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: missing AVE split file')
  events, repeats, bad, first_line = [], [], [], {}
  with open(path) as f:
    for n, raw in enumerate(f, 1):
      line, where = raw.rstrip('\r\n'), f'{path}:{n}'
      if not line.strip() or (n == 1 and line.startswith('Category&')):
        continue
      fields = line.split('&')
      if len(fields) != 5:
        bad.append((where, f"expected 'Category&VideoID&Quality&StartSec&EndSec', got '{line}'"))
        continue
      category, video_id, _, start, end = fields
      if video_id in first_line:
        repeats.append((where, f'repeats video id {video_id} of line {first_line[video_id]}; '
                               'the first line is kept'))
        continue
      first_line[video_id] = n
      if category not in CLASSES:
        bad.append((where, f"unknown category '{category}'"))
        continue
      try:
        start_s, end_s = float(start), float(end)
      except ValueError:
        bad.append((where, f"segment times '{start}', '{end}' are not numbers"))
        continue
      if not 0 <= start_s < end_s:
        bad.append((where, f'event segment [{start}, {end}] s of {video_id} is empty'))
        continue
      events.append(Event(video_id, CLASSES.index(category), start_s, end_s, where))
  return events, repeats, bad


def scan(raw_dir: str) -> tfds_builders.Scan:
  """The events of the three split files, each pointing at AVE/<id>.mp4.

  Raises:
    FileNotFoundError: `raw_dir`, `AVE/` or a split file is missing (`LAYOUT`).
  """
  LAYOUT.check(raw_dir)
  video_dir = os.path.join(raw_dir, 'AVE')
  by_split, bad, excluded = {}, [], []
  for split, filename in SPLIT_FILES.items():
    events, repeats, malformed = read_annotations(os.path.join(raw_dir, filename))
    excluded += repeats
    bad += malformed
    kept = []
    for e in events:
      mp4 = os.path.join(video_dir, e.id + '.mp4')
      if os.path.isfile(mp4):
        kept.append(e._replace(mp4=mp4))
      else:
        bad.append((mp4, f'missing video file (listed at {e.line})'))
    by_split[split] = kept
  metadata = {'dataset': NAME, 'classes': list(CLASSES), 'num_frames': NUM_FRAMES,
              'preprocessing': {'sample_rate': SAMPLE_RATE, 'clip_seconds': CLIP_SECONDS,
                                'nperseg': NPERSEG, 'noverlap': NOVERLAP, 'frames_per_second': 1}}
  return tfds_builders.Scan(by_split, bad, excluded, metadata)


def encode(event: Event) -> dict:
  """One record: float16 log-PSD [257, 1004] of the segment and 4 JPEG frames. Raises media.BadInput."""
  wave = media.read_audio_track(event.mp4, SAMPLE_RATE, channel='mean')
  if len(wave) / SAMPLE_RATE < event.end - END_TOLERANCE:
    raise media.BadInput(event.mp4, f'the audio track lasts {len(wave) / SAMPLE_RATE:.2f} s, shorter than '
                                    f'the event segment [{event.start:g}, {event.end:g}) s ({event.line})')
  segment = wave[int(round(event.start * SAMPLE_RATE)):int(round(event.end * SAMPLE_RATE))]
  if len(segment) == 0:
    raise media.BadInput(event.mp4, f'no audio in the event segment [{event.start:g}, {event.end:g}) s '
                                    f'(the track lasts {len(wave) / SAMPLE_RATE:.2f} s; {event.line})')
  audio = spectrogram.log_psd(spectrogram.loop_to_length(segment, SAMPLE_RATE * CLIP_SECONDS),
                              SAMPLE_RATE, NPERSEG, NOVERLAP)
  if not np.all(np.isfinite(audio)):
    raise media.BadInput(event.mp4, 'audio decodes to NaN or Inf values')
  try:
    rgb = media.frames_at_1fps(event.mp4, NUM_FRAMES, start=event.start, end=event.end,
                               fill_seed=zlib.crc32(event.id.encode()), end_tolerance=END_TOLERANCE)
  except media.TooShort as e:
    raise media.BadInput(e.path, f'{e.problem} ({event.line})') from e
  return {'id': event.id, 'label': event.label, 'audio': audio.astype(np.float16),
          'frames': [media.encode_jpeg(f) for f in rgb]}


class Builder(tfds_builders.AVBuilder, skip_registration=True):
  """AVE -> ArrayRecord splits 'train', 'val', 'test' (the predefined split files)."""
  name = NAME
  VERSION = tfds.core.Version(VERSION)
  encode = encode

  def features(self) -> dict:
    return tfds_builders.record_features(AUDIO_SHAPE, tfds.features.ClassLabel(names=CLASSES))

  def scan(self, raw_dir: str) -> tfds_builders.Scan:
    return scan(raw_dir)


def load(cfg) -> Dataset:
  """The prepared AVE under `cfg.dir`: its predefined train/val/test splits."""
  prepared = open_prepared(cfg.dir, NAME, VERSION)
  check_config(cfg, prepared)
  sources = {}
  for split in splits.SPLITS:
    if not prepared.metadata['splits'][split]:
      raise ValueError(f'{prepared.path}: the AVE {split} split is empty')
    sources[split] = make_source(prepared.builder.as_data_source(split), None, cfg, per_frame=True,
                                 train=split == 'train')
  return Dataset(modalities=('audio', 'video'), num_classes=len(CLASSES),
                 sample_shapes={'audio': AUDIO_SHAPE, 'video': tuple(cfg.video_shape)}, splits=sources)
