"""ShardRunner implementations: torch (CUDA / MPS / CPU); MLX and llama.cpp solo mode come later."""
