"""Arrays on the host: the currency between the shard runners and the backend-neutral glue (the
generate loop, the swarm stage, the sampler), which works on numpy so that an MLX node never
imports torch.

Token ids are int64 arrays; hidden states are arrays of the dtype named on the wire. numpy has no
bfloat16, so bfloat16 travels as its raw 16-bit words in a uint16 array, as it does on the wire:
a runner reads a uint16 array as bfloat16. Little endian, as on the wire (wire.py).
"""

from __future__ import annotations

import numpy as np

HOST_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "bfloat16": np.dtype("<u2")}
BFLOAT16_WORDS = HOST_DTYPES["bfloat16"]

