"""The interface document installed for busctl and gdbus users is XML that any parser reads."""

import xml.etree.ElementTree as ET
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[3]


def test_the_interface_document_is_well_formed_xml() -> None:
    # A "--" inside an XML comment (a CLI flag named in prose) makes the whole document unreadable.
    root = ET.parse(PROJECT / "dbus" / "org.quilt.Runtime.xml").getroot()
    assert {i.get("name") for i in root.findall("interface")} == {
        "org.quilt.Runtime." + n for n in ("Manager", "Container", "Image", "Network", "Volume")
    }
