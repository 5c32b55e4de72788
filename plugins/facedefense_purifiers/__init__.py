"""Built-in purifiers: counter-measures an adversary applies before attacking."""
