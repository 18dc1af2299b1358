"""The device owner's public self-service page (/my-phone/): model-less, above the apps it reads."""
