"""`get_config` for the SigLIP 2 layers and towers (the Keras serialization contract
every component of the paper's architecture follows): each class lists, in
`CONFIG_KEYS`, the constructor arguments it keeps as attributes of the same name."""


class ConfigAttributes:
    """Mixin placed before the Keras base class: `get_config()` is the base config plus
    `{key: getattr(self, key)}` for every key of `CONFIG_KEYS` (tuples become lists,
    as JSON keeps them)."""

    CONFIG_KEYS = ()

    def store_config(self, values):
        """Sets `self.<key> = values[key]` for every key of `CONFIG_KEYS`; constructors
        call it with their `locals()` once the arguments are normalized."""
        for key in self.CONFIG_KEYS:
            setattr(self, key, values[key])

    def get_config(self):
        config = super().get_config()
        for key in self.CONFIG_KEYS:
            value = getattr(self, key)
            config[key] = list(value) if isinstance(value, tuple) else value
        return config
