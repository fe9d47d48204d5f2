"""Distillation methods: pure loss functions and the trainable adapters feature methods own."""
