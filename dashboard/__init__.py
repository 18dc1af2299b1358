"""The per-provider dashboard: figures read from support, payments and devices (above them all; model-less)."""
