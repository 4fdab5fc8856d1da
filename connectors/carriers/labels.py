"""A shipping wave's print file (docs/carriers.md, "Waves and labels"): one PDF, and per
order a packing slip (A4) followed by its shipping label (4 × 6 in, the thermal label size
every carrier accepts; A6 is within a millimetre of it). The label carries the tracking
number as a Code 128 barcode (what scanners at the carrier's depot read) and a QR code of the
tracking page's address, the carrier and service, the temperature class in large type when
the parcel must be kept cold, the sender, the recipient and the order reference.

Chinese text is set in an embedded subset of a CJK TrueType font where one is installed
(Debian's fonts-wqy-microhei), else in the PDF standard CID font STSong-Light. reportlab
draws the barcodes as vectors; the tests render the file with pdftoppm and read them back
with zbar.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import segno
from PIL import Image
from reportlab import rl_config
from reportlab.graphics.barcode import code128
from reportlab.lib.pagesizes import A4, inch
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas

from events.shipping import Party, Temperature

LABEL_SIZE = (4 * inch, 6 * inch)
# Streams compressed, not also ASCII85-encoded (which only makes a PDF 7-bit clean, at a
# quarter more bytes and, without reportlab's C accelerator, a millisecond a label).
rl_config.useA85 = 0
# A CJK TrueType font embedded (subset: only the glyphs used) where one is installed, so the
# label prints the same on any printer; else the standard CID font, which a PDF reader
# supplies but a printer's renderer without CJK fonts (poppler, ghostscript) may not.
EMBEDDED_FONTS = (
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),  # Debian fonts-wqy-microhei
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),  # Debian fonts-wqy-zenhei
)


def _font() -> str:
    for path in EMBEDDED_FONTS:
        if path.exists():
            pdfmetrics.registerFont(TTFont("LabelCJK", str(path), subfontIndex=0))
            return "LabelCJK"
    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    return "STSong-Light"


FONT = _font()

TEMPERATURE_MARK = {
    Temperature.CHILLED: "冷藏 CHILLED 0-8°C",
    Temperature.FROZEN: "冷冻 FROZEN ≤ -18°C",
}


@dataclass(frozen=True)
class SlipLine:
    sku: str
    name: str
    quantity: int


@dataclass(frozen=True)
class WaveItem:
    """One order of the wave: its slip and its label."""

    order_ref: str  # what the customer and the store call it (the channel's order number)
    reference: str  # the shipment's idempotency key
    carrier: str
    service: str
    tracking_number: str
    tracking_url: str
    sender: Party
    recipient: Party
    lines: list[SlipLine]
    weight_g: int
    temperature: Temperature = Temperature.AMBIENT


class WavePrinter:
    """The wave's print file, built an order at a time (a wave prints each order as soon as
    its label is bought, while the others are still being bought)."""

    def __init__(self, *, wave: str, location: str) -> None:
        self.wave, self.location = wave, location
        self._out = io.BytesIO()
        self._canvas = Canvas(self._out, pagesize=A4, pageCompression=1)
        self._canvas.setTitle(f"wave {wave} {location}")

    def add(self, item: WaveItem) -> None:
        """The item's packing slip, then its label."""
        _slip(self._canvas, wave=self.wave, location=self.location, item=item)
        self._canvas.showPage()
        _label(self._canvas, item)
        self._canvas.showPage()

    def finish(self) -> bytes:
        self._canvas.save()
        return self._out.getvalue()


def wave_pdf(*, wave: str, location: str, items: list[WaveItem]) -> bytes:
    """The wave's print file: per item a packing slip, then its label."""
    printer = WavePrinter(wave=wave, location=location)
    for item in items:
        printer.add(item)
    return printer.finish()


def _text(canvas: Canvas, x: float, y: float, text: str, size: float = 10) -> None:
    canvas.setFont(FONT, size)
    canvas.drawString(x, y, text)


def _address(party: Party) -> list[str]:
    place = " ".join(p for p in (party.province, party.city, party.district) if p)
    return [
        f"{party.name}  {party.phone}",
        place,
        party.street,
        " ".join(p for p in (party.postal_code, party.country) if p),
    ]


def _slip(canvas: Canvas, *, wave: str, location: str, item: WaveItem) -> None:
    canvas.setPageSize(A4)
    width, height = A4
    _text(canvas, 50, height - 60, f"装箱单 Packing slip — {item.order_ref}", 16)
    _text(canvas, 50, height - 82, f"wave {wave}  {location}  {item.carrier} {item.service}")
    _text(canvas, 50, height - 98, f"tracking {item.tracking_number}")
    y = height - 130
    for text in ["Ship to:", *_address(item.recipient)]:
        _text(canvas, 50, y, text, 11)
        y -= 15
    y -= 10
    _text(canvas, 50, y, "SKU", 10)
    _text(canvas, 200, y, "Item", 10)
    _text(canvas, width - 100, y, "Qty", 10)
    y -= 16
    for line in item.lines:
        _text(canvas, 50, y, line.sku[:24], 10)
        _text(canvas, 200, y, line.name[:40], 10)
        _text(canvas, width - 100, y, str(line.quantity), 10)
        y -= 14
        if y < 60:  # a long order goes on the next page
            canvas.showPage()
            canvas.setPageSize(A4)
            y = height - 60
    if item.temperature is not Temperature.AMBIENT:
        _text(canvas, 50, max(y - 20, 40), TEMPERATURE_MARK[item.temperature], 14)


def _label(canvas: Canvas, item: WaveItem) -> None:
    canvas.setPageSize(LABEL_SIZE)
    width, height = LABEL_SIZE
    margin = 0.15 * inch
    _text(canvas, margin, height - 0.4 * inch, item.carrier.upper(), 20)
    _text(canvas, width / 2, height - 0.4 * inch, item.service[:18], 12)
    # Code 128 of the tracking number, as wide as the label allows (quiet zones included).
    bars = code128.Code128(
        item.tracking_number, barHeight=0.9 * inch, barWidth=1.1, humanReadable=True
    )
    scale = min(1.0, (width - 2 * margin) / bars.width)
    canvas.saveState()
    canvas.translate(margin, height - 1.65 * inch)
    canvas.scale(scale, 1)  # narrower bars, as tall: still a valid Code 128
    bars.drawOn(canvas, 0, 0)
    canvas.restoreState()
    y = height - 1.95 * inch
    for text in ["TO:", *_address(item.recipient)]:
        _text(canvas, margin, y, text, 11)
        y -= 0.2 * inch
    y -= 0.05 * inch
    for text in ["FROM:", *_address(item.sender)[:2]]:
        _text(canvas, margin, y, text, 8)
        y -= 0.15 * inch
    _text(canvas, margin, y - 0.05 * inch, f"{item.weight_g / 1000:.2f} kg  {item.order_ref}", 9)
    if item.temperature is not Temperature.AMBIENT:
        canvas.setLineWidth(2)
        canvas.rect(margin, 0.2 * inch, width - 2 * margin - 1.35 * inch, 0.5 * inch)
        _text(canvas, margin + 6, 0.38 * inch, TEMPERATURE_MARK[item.temperature], 12)
    _qr(canvas, item.tracking_url, x=width - margin - 1.2 * inch, y=0.15 * inch, side=1.2 * inch)


def _qr(canvas: Canvas, text: str, *, x: float, y: float, side: float) -> None:
    """A QR code (level M) of `text`, drawn as one 1-bit image of its modules (a pixel per
    module, scaled up without smoothing). Mask pattern 2 is fixed: choosing the best of the
    eight (as the standard suggests, for scanners) took reportlab's encoder 17 ms a label and
    segno's 3 ms; any mask is a valid code, and the test reads it back with zbar."""
    code = segno.make(text, error="m", mask=2, micro=False)
    quiet = 2  # modules of white border
    count = len(code.matrix) + 2 * quiet
    image = Image.new("1", (count, count), 1)
    image.putdata(
        [
            0
            if 0 <= r - quiet < count - 2 * quiet
            and 0 <= c - quiet < count - 2 * quiet
            and code.matrix[r - quiet][c - quiet]
            else 1
            for r in range(count)
            for c in range(count)
        ]
    )
    canvas.drawImage(ImageReader(image), x, y, width=side, height=side)
