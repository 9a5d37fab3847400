"""ddm_torch -- the PyTorch reference worker of ddm (worker protocol v1).

Modules: nanomsg (ctypes binding of the system libnanomsg), safetensors
(reader/writer), mlp (the ddm MLP expert), unet (a small convolutional U-Net
expert), experts (load any weights file into a torch.nn.Module), protocol
(validation, errors, MAC trailer), server (batching worker), cli (the
ddm-torch-worker command line), train_unet (the U-Net trainer).
"""
import os as _os
import re as _re


def _read_version():
    """The one version string of the project, from common/version.h."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    path = _os.path.join(here, "..", "..", "..", "common", "version.h")
    try:
        with open(path, encoding="utf-8") as f:
            m = _re.search(r'#define DDM_VERSION "([^"]+)"', f.read())
        return m.group(1) if m else "unknown"
    except OSError:
        return "unknown"


__version__ = _read_version()
