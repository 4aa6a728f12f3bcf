"""HTTP routes: thin functions that parse, call one function and shape the answer."""
