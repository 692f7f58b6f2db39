"""Rules: parse, validate, compile and evaluate the rules directory."""
