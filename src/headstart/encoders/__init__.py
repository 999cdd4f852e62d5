"""Pretrained text and audio encoders, the encoder + head network, and its training loop."""
