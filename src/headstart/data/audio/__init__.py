"""Audio files -> labelled samples, with durations, groups (speakers) and splits that keep groups apart.

Sources: a folder with one subfolder per class, a flat folder whose file names carry the label (``label_pattern``),
a table (CSV/TSV/JSONL/Parquet) with a file-path column and a label column, or an :class:`AudioSamples`. Every
file is inspected once while loading (in parallel): unreadable, empty, too short and silent files are skipped and
listed before training starts; clipped files are kept and named in the notes. When groups are known (a speaker
in the file name or a table column), the validation split never shares a group with training.

One idea per file:

- :mod:`~headstart.data.audio.waves` - one file or upload -> a float32 mono wave (decoding, resampling), the
  checks that make a file unusable, and fitting a wave to a clip length;
- :mod:`~headstart.data.audio.samples` - :class:`AudioSamples` and :class:`AudioSplits`;
- :mod:`~headstart.data.audio.sources` - class folders, flat folders with label patterns, and tables -> samples,
  every file inspected once;
- :mod:`~headstart.data.audio.loading` - :func:`load_audio_dataset`, :func:`read_labelled_audio` and
  :func:`group_split`: sources -> splits that keep groups apart.
"""

from headstart.data.audio.loading import (
    group_split,
    load_audio_dataset,
    read_labelled_audio,
)
from headstart.data.audio.samples import AudioSamples, AudioSplits
from headstart.data.audio.sources import (
    group_from_pattern,
    looks_like_audio_data,
    read_audio_table,
    samples_from_pattern,
    scan_audio_folder,
)
from headstart.data.audio.waves import (
    AUDIO_EXTENSIONS,
    MIN_SECONDS,
    AudioDecodeError,
    choose_clip_seconds,
    fit_length,
    inspect_audio,
    read_audio,
    read_audio_bytes,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "MIN_SECONDS",
    "AudioDecodeError",
    "AudioSamples",
    "AudioSplits",
    "choose_clip_seconds",
    "fit_length",
    "group_from_pattern",
    "group_split",
    "inspect_audio",
    "load_audio_dataset",
    "read_labelled_audio",
    "looks_like_audio_data",
    "read_audio",
    "read_audio_bytes",
    "read_audio_table",
    "samples_from_pattern",
    "scan_audio_folder",
]
