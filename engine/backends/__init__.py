"""ShardRunner implementations: torch (CUDA / MPS / CPU) and MLX (Apple Silicon), chosen in choose.py;
and the llama.cpp solo mode (a whole GGUF model, no swarm)."""
