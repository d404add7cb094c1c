"""FP8 quantization: tensorwise, rowwise and DeepSeek-V3's fine-grained (1x128, 128x128) scaling; see reference.py."""
