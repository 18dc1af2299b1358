"""The demo app holds no models: it generates data for the others."""
