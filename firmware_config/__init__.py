"""firmware_config: declarative reader and terminal profiles (TOML) and their schema."""
