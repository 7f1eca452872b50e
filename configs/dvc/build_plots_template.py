"""Write configs/dvc/plots.html: DVC's plots page with Vega, Vega-Lite and Vega-Embed inlined.

DVC's own page (dvc_render.html.PAGE_HTML) loads these three scripts from a CDN, so offline, or
behind a proxy, `dvc plots show` draws no chart but the PNGs. A template without the `{scripts}`
placeholder gets none of those links; this one carries the scripts themselves, at the versions
dvc-render links (dvc_render.vega.VegaRenderer.SCRIPTS), so the specs DVC writes render as before.
.dvc/config names the template (`plots.html_template`), so it is the default for every
`dvc plots show` and `dvc plots diff`.

    cd /tmp && npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
    python configs/dvc/build_plots_template.py /tmp

The three packages are BSD-3-Clause (University of Washington Interactive Data Lab); their
copyright lines go into the page with the scripts.
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
from pathlib import Path

PACKAGES = [  # (npm package, version, script in the package), in the order the page must load them
    ("vega", "5.20.2", "package/build/vega.min.js"),
    ("vega-lite", "5.2.0", "package/build/vega-lite.min.js"),
    ("vega-embed", "6.18.2", "package/build/vega-embed.min.js"),
]
TEMPLATE = Path(__file__).with_name("plots.html")

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC plots</title>
    <!-- Written by configs/dvc/build_plots_template.py: {provenance}.
         Vega, Vega-Lite and Vega-Embed are BSD-3-Clause: {copyright} -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def member(tarball: Path, name: str) -> bytes:
    with tarfile.open(tarball) as archive:
        return archive.extractfile(name).read()


def build(tarballs: Path) -> str:
    scripts, provenance, copyrights = [], [], set()
    for package, version, path in PACKAGES:
        tarball = tarballs / f"{package}-{version}.tgz"
        script = member(tarball, path)
        for marker in (b"</script", b"{plot_divs}", b"{scripts}", b"{refresh_tag}"):  # would end the element
            if marker in script:  # early, or be filled in by DVC
                raise ValueError(f"{tarball}: {path} holds {marker.decode()!r}")
        licence = member(tarball, "package/LICENSE").decode()
        copyrights.add(licence.splitlines()[0].strip())
        provenance.append(f"{package}@{version} {path} sha256 {hashlib.sha256(script).hexdigest()}")
        scripts.append(f'    <script type="text/javascript">\n{script.decode()}\n    </script>')
    return PAGE.format(
        provenance="; ".join(provenance), copyright=" / ".join(sorted(copyrights)), scripts="\n".join(scripts)
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {sys.argv[0]} DIRECTORY_WITH_THE_NPM_TARBALLS")
    TEMPLATE.write_text(build(Path(sys.argv[1])), encoding="utf-8")
    print(f"wrote {TEMPLATE} ({TEMPLATE.stat().st_size} bytes)")
