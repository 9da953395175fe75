"""A stand-in for the Trustee script: prints what it would process and exits 0 (1 with --fail)."""

import sys
import time

date = sys.argv[sys.argv.index("--date") + 1] if "--date" in sys.argv else "today"
print(f"Trustee: processing positions of {date}", flush=True)
for fund in ("FIDC Agro Safra", "FIM Crédito Privado"):
    time.sleep(0.05)
    print(f"Trustee: {fund} ok", flush=True)
if "--fail" in sys.argv:
    print("Trustee: could not reach the custodian", file=sys.stderr, flush=True)
    sys.exit(1)
print("Trustee: done", flush=True)
