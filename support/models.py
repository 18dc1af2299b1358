"""Support cases, proof-of-purchase reviews and unlock requests (built with the people's-side issue)."""
