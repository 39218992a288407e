"""yolojax."""
