"""Config: composing it from conf/ and override strings, the resolvers conf/ uses, the rules every
value is checked against, and the config a resumed run continues with."""
