"""nn.Modules and configs built on the xLSTM operators: layers, blocks, block stacks and language models."""
from xlstm_core.blocks import PostUpBlock, PreUpBlock, make_block
from xlstm_core.checkpoint import load_pretrained, save_pretrained
from xlstm_core.config import xLSTMBlockStackConfig, xLSTMLMConfig
from xlstm_core.ffn import GatedFFN
from xlstm_core.generation import generate, sample_next, stream
from xlstm_core.lm import xLSTMLM
from xlstm_core.mlstm_layer import mLSTMPostUpLayer, mLSTMPreUpLayer, soft_cap
from xlstm_core.norms import MultiHeadNorm, RMSNorm
from xlstm_core.slstm_layer import sLSTMLayer
from xlstm_core.stack import xLSTMBlockStack
from xlstm_core.state import LayerState, concat_states, map_state

__all__ = [
    "xLSTMBlockStackConfig", "xLSTMBlockStack", "xLSTMLMConfig", "xLSTMLM", "mLSTMPreUpLayer", "mLSTMPostUpLayer",
    "sLSTMLayer", "PreUpBlock", "PostUpBlock", "make_block", "GatedFFN", "RMSNorm", "MultiHeadNorm", "LayerState",
    "map_state", "concat_states", "generate", "stream", "sample_next", "save_pretrained", "load_pretrained",
    "soft_cap",
]
