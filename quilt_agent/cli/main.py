def main() -> None:
    raise SystemExit("quiltctl: not yet")
