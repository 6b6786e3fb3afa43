"""What the completeness checks of an upload cost: images.read_image against images.check_complete alone.

Medians of 5 in one run, on a smooth 4000x3000 image and a 2354x2354 noise image, each as JPEG and PNG.
"""

import io
import os
import statistics
import sys
import time

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import images  # noqa: E402


def median_seconds(work, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    pictures = {"smooth 4000x3000": Image.linear_gradient("L").resize((4000, 3000)).convert("RGB"),
                "noise 2354x2354": Image.effect_noise((2354, 2354), 80).convert("RGB")}
    for name, picture in pictures.items():
        for image_format in ("JPEG", "PNG"):
            buffer = io.BytesIO()
            picture.save(buffer, image_format, **({"quality": 92} if image_format == "JPEG" else {}))
            data = buffer.getvalue()
            whole = median_seconds(lambda: images.read_image(io.BytesIO(data), max_pixels=10**8))
            check = median_seconds(lambda: images.check_complete(image_format, data))
            print(f"{image_format} {name}, {len(data) / 2**20:.1f} MB: read_image {whole * 1000:.0f} ms, "
                  f"of which the completeness check {check * 1000:.0f} ms ({check / whole:.0%})")


if __name__ == "__main__":
    main()
