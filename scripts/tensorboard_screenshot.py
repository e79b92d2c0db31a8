"""Screenshot of TensorBoard showing the demo search (the picture in the README's "Watch a run live").

Runs ``nasrun search +experiment=demo logger=tensorboard`` into a temporary directory (or uses ``--run DIR``),
starts TensorBoard on it, and saves a headless-Chromium screenshot of its time-series view:

    pip install playwright            # uses the system Chromium (Debian: apt-get install chromium)
    python scripts/tensorboard_screenshot.py --out docs/tensorboard_demo.png
"""

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="an existing run or sweep directory with tensorboard/ event files")
    ap.add_argument("--out", default="docs/tensorboard_demo.png")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--filter", default="train_loss|valid_acc|skip_count|benchmark|alpha",
                    help="TensorBoard's tag filter (a regex)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else Path(tmp) / "demo"
        if not args.run:
            subprocess.run([sys.executable, "-m", "nasrun.cli", "search", "+experiment=demo", "logger=tensorboard",
                            "trainer.progress=false", f"hydra.run.dir={run}"], check=True)
        port = free_port()
        tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(run), "--port", str(port),
                               "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/"
            for _ in range(120):
                try:
                    urllib.request.urlopen(url, timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1400, "height": 1350})
                page.goto(f"{url}?tagFilter={args.filter}#timeseries")
                page.wait_for_timeout(15000)  # the dashboard loads its runs and draws the charts
                close = page.locator("button[aria-label*='lose']:visible")  # the settings pane, if open
                if close.count():
                    close.first.click(timeout=5000)
                    page.wait_for_timeout(1500)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=args.out)
                browser.close()
        finally:
            tb.terminate()
            tb.wait()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
