"""A small stand-in for clixon-pyapi's Element tree: what the service module uses of it.

Lets the service module run without clixon-pyapi: in the tests and the benchmark.
It mirrors pyapi's behaviour that matters here: text is stored and dumped as
given (the module escapes it), and ``dumps()`` returns the XML of the children.
"""

from __future__ import annotations


class Element:
    def __init__(self, name: str = "", attributes: dict | None = None, data: str = ""):
        self.name, self.attributes, self.cdata = name, dict(attributes or {}), data
        self.children: list[Element] = []

    def create(self, name: str, attributes: dict | None = None, data: str = "") -> Element:
        child = Element(name, attributes, data)
        self.children.append(child)
        return child

    def get_elements(self, name: str | None = None) -> list[Element]:
        return [child for child in self.children if name is None or child.name == name]

    def delete(self, name: str = "", element: Element | None = None) -> None:
        for child in [element] if element is not None else self.get_elements(name):
            self.children.remove(child)

    def get_data(self) -> str:
        return self.cdata

    def dumps(self) -> str:
        out = []
        for child in self.children:
            attributes = "".join(f' {key}="{value}"' for key, value in child.attributes.items())
            out.append(f"<{child.name}{attributes}>{child.cdata}{child.dumps()}</{child.name}>")
        return "".join(out)
