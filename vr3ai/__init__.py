"""VR3 AI: voice agents on an existing Asterisk PBX over ARI."""
