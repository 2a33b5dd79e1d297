"""Qt widget stubs of the stand-in: properties, signals by name, children.

Signals are connected PythonQt-style, `widget.connect("clicked(bool)", slot)`,
and emitted with `widget.emit("clicked", True)`; a slot receives as many of
the signal's arguments as it accepts, as in PythonQt.
"""

from __future__ import annotations

import inspect


def _arity(slot) -> int:
    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return 0
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return 99
    return sum(1 for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


class QWidget:
    """A widget: named, with children, dynamic properties and named signals."""

    def __init__(self, parent=None) -> None:
        self.objectName = ""
        self.enabled = True
        self.visible = True
        self.toolTip = ""
        self.text = ""
        self._children: list = []
        self._slots: dict = {}
        self._properties: dict = {}
        if parent is not None:
            parent._children.append(self)

    def connect(self, signal: str, slot) -> None:
        self._slots.setdefault(signal.split("(")[0], []).append(slot)

    def disconnect(self, signal: str, slot) -> None:
        slots = self._slots.get(signal.split("(")[0], [])
        if slot in slots:
            slots.remove(slot)

    def emit(self, signal: str, *args) -> None:
        for slot in list(self._slots.get(signal, [])):
            slot(*args[:_arity(slot)])

    def setProperty(self, name: str, value) -> None:
        self._properties[name] = value

    def property(self, name: str):
        return self._properties.get(name)

    def children(self) -> list:
        return list(self._children)

    def descendants(self) -> list:
        found = []
        for child in self._children:
            found.append(child)
            found.extend(child.descendants())
        return found

    def setToolTip(self, text: str) -> None:
        self.toolTip = text

    def setEnabled(self, enabled: bool) -> None:
        self.enabled = bool(enabled)

    def setVisible(self, visible: bool) -> None:
        self.visible = bool(visible)

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False

    def setText(self, text: str) -> None:
        self.text = text


class QPushButton(QWidget):
    def click(self) -> None:
        if self.enabled:
            self.emit("clicked", False)


class QLabel(QWidget):
    pass


class QCheckBox(QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.checked = False

    def setChecked(self, checked: bool) -> None:
        if bool(checked) != self.checked:
            self.checked = bool(checked)
            self.emit("toggled", self.checked)


class QComboBox(QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.items: list = []
        self.currentText = ""

    @property
    def count(self) -> int:
        return len(self.items)

    def addItem(self, text: str) -> None:
        self.addItems([text])

    def addItems(self, texts) -> None:
        self.items.extend(texts)
        if not self.currentText and self.items:
            self.setCurrentText(self.items[0])

    def clear(self) -> None:
        self.items = []
        self.currentText = ""

    def findText(self, text: str) -> int:
        return self.items.index(text) if text in self.items else -1

    def setCurrentText(self, text: str) -> None:
        if text in self.items and text != self.currentText:
            self.currentText = text
            self.emit("currentTextChanged", text)


class QProgressBar(QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.minimum = 0
        self.maximum = 100
        self.value = 0

    def setValue(self, value: int) -> None:
        self.value = int(value)


class QPlainTextEdit(QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.plainText = ""

    def setPlainText(self, text: str) -> None:
        self.plainText = text

    def toPlainText(self) -> str:
        return self.plainText


class QTextEdit(QPlainTextEdit):
    pass
