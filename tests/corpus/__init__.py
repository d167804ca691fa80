"""Hand-made frames shared by the parser, native and XDP tests."""
