"""Vision-LSTM backbones (registered with timm on import), image data, and training / evaluation loops."""
from vision.vil import VisionLSTM, checkpoint_filter_fn, convert_published, load_checkpoint

__all__ = ["VisionLSTM", "checkpoint_filter_fn", "convert_published", "load_checkpoint"]
