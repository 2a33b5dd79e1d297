"""Stand-in for PythonQt's `qt` module: the compiled part of Slicer the real Python layer talks to.

Only what Slicer's own Python files (slicer.util, ScriptedLoadableModule,
parameterNodeWrapper) and the module call is modelled, the PythonQt way:
Q_PROPERTYs are plain attributes whose setters emit the notify signal, signals
are attributes with connect/disconnect/emit, and the old style
`widget.connect("clicked(bool)", slot)` works too.  A slot receives as many of
the signal's arguments as it accepts, as PythonQt does.

Where the real behaviour is only guessed, the guess is stated and errs on the
strict side (an unexpected dialog raises instead of answering).
"""

from __future__ import annotations

import inspect
import time
import traceback
import xml.etree.ElementTree as ElementTree


# Exceptions raised by slots, in order (PythonQt prints them; tests inspect them).
slotErrors: list = []


def _arity(slot) -> int:
    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return 0
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return 99
    return sum(1 for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               and p.default is p.empty)


class BoundSignal:
    """A signal of one object: connect, disconnect, emit (blocked by blockSignals)."""

    def __init__(self, owner, name: str) -> None:
        self._owner = owner
        self._name = name
        self._slots: list = []

    def connect(self, slot) -> None:
        self._slots.append(slot)

    def disconnect(self, slot=None) -> None:
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)
        else:
            raise RuntimeError(f"{self._name}: slot {slot!r} is not connected")  # Qt: "Failed to disconnect"

    def emit(self, *args) -> None:
        """Call the slots; like PythonQt, an exception in a slot is printed and recorded, not raised."""
        if getattr(self._owner, "_signalsBlocked", False):
            return
        for slot in list(self._slots):
            try:
                slot(*args[:_arity(slot)])
            except Exception as error:  # noqa: BLE001  (PythonQt prints it to the Python console)
                traceback.print_exc()
                slotErrors.append(error)

    def __call__(self, *args) -> None:
        self.emit(*args)


class Signal:
    """Declares a signal on a class; each instance gets its own BoundSignal."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        signals = instance.__dict__.setdefault("_signals", {})
        if self.name not in signals:
            signals[self.name] = BoundSignal(instance, self.name)
        return signals[self.name]


def notifyingProperty(attribute: str, signalName: str, convert=lambda value: value):
    """A Q_PROPERTY as PythonQt shows it: setting it to a new value emits its notify signal with that value."""
    def getter(self):
        return getattr(self, attribute)

    def setter(self, value) -> None:
        value = convert(value)
        if value != getattr(self, attribute):
            setattr(self, attribute, value)
            getattr(self, signalName).emit(value)

    return property(getter, setter)


class QObject:
    """Object name (PythonQt also exposes it as `name`), parent/children, dynamic properties, signals."""

    destroyed = Signal()

    def __init__(self, parent=None) -> None:
        self.objectName = ""
        self._parent = None
        self._children: list = []
        self._properties: dict = {}
        self._signalsBlocked = False
        if parent is not None:
            self.setParent(parent)

    @property
    def name(self) -> str:
        return self.objectName

    @name.setter
    def name(self, value: str) -> None:
        self.objectName = value

    def setObjectName(self, name: str) -> None:
        self.objectName = name

    def className(self) -> str:
        return type(self).__name__

    def parent(self):
        return self._parent

    def setParent(self, parent) -> None:
        if self._parent is not None:
            self._parent._children.remove(self)
        self._parent = parent
        if parent is not None:
            parent._children.append(self)

    def children(self) -> list:
        return list(self._children)

    def findChildren(self, cls=None) -> list:
        found = []
        for child in self._children:
            if cls is None or isinstance(child, cls):
                found.append(child)
            found.extend(child.findChildren(cls))
        return found

    def setProperty(self, name: str, value) -> None:
        self._properties[name] = value

    def property(self, name: str):
        return self._properties.get(name)

    def blockSignals(self, block: bool) -> bool:
        previous = self._signalsBlocked
        self._signalsBlocked = bool(block)
        return previous

    def signalsBlocked(self) -> bool:
        return self._signalsBlocked

    def connect(self, signature: str, slot) -> bool:
        """PythonQt's string form: connect("clicked(bool)", slot)."""
        getattr(self, signature.split("(")[0]).connect(slot)
        return True

    def disconnect(self, signature: str, slot=None) -> bool:
        getattr(self, signature.split("(")[0]).disconnect(slot)
        return True

    def deleteLater(self) -> None:
        """Deletion is not modelled."""

    def isWidgetType(self) -> bool:
        return False


class QWidget(QObject):
    """enabled / visible / toolTip / text properties and a layout."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.enabled = True
        self.visible = True
        self.toolTip = ""
        self.statusTip = ""
        self._layout = None

    def isWidgetType(self) -> bool:
        return True

    def setEnabled(self, enabled: bool) -> None:
        self.enabled = bool(enabled)

    def isEnabled(self) -> bool:
        return self.enabled

    def setVisible(self, visible: bool) -> None:
        self.visible = bool(visible)

    def isVisible(self) -> bool:
        return self.visible

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False

    def setToolTip(self, text: str) -> None:
        self.toolTip = text

    def setLayout(self, layout) -> None:
        self._layout = layout
        layout._owner = self

    def layout(self):
        return self._layout

    def setSizePolicy(self, *args) -> None:
        """Sizes are not modelled."""


class QLayout(QObject):
    """Adding a widget to a layout makes it a child of the layout's widget, as in Qt."""

    def __init__(self, parent=None) -> None:
        super().__init__(None)
        self._owner = None
        if isinstance(parent, QWidget):
            parent.setLayout(self)

    def addWidget(self, widget, *args) -> None:
        if self._owner is not None:
            widget.setParent(self._owner)

    def addRow(self, *items) -> None:
        for item in items:
            if isinstance(item, QWidget):
                self.addWidget(item)

    def addLayout(self, layout, *args) -> None:
        layout._owner = self._owner

    def addStretch(self, stretch: int = 0) -> None:
        """Spacing is not modelled."""


class QVBoxLayout(QLayout):
    pass


class QHBoxLayout(QLayout):
    pass


class QFormLayout(QLayout):
    pass


class QGridLayout(QLayout):
    pass


class QAbstractButton(QWidget):
    clicked = Signal()
    toggled = Signal()
    pressed = Signal()
    released = Signal()

    def __init__(self, text_or_parent=None, parent=None) -> None:
        if isinstance(text_or_parent, str):
            super().__init__(parent)
            self.text = text_or_parent
        else:
            super().__init__(text_or_parent)
            self.text = ""
        self.checkable = False
        self._checked = False

    checked = notifyingProperty("_checked", "toggled", bool)

    def setChecked(self, checked: bool) -> None:
        self.checked = checked

    def isChecked(self) -> bool:
        return self.checked

    def setText(self, text: str) -> None:
        self.text = text

    def click(self) -> None:
        """Like a user's click: nothing happens on a disabled button."""
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self.checked
        self.clicked.emit(self.checked)


class QPushButton(QAbstractButton):
    pass


class QToolButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    stateChanged = Signal()

    def __init__(self, text_or_parent=None, parent=None) -> None:
        super().__init__(text_or_parent, parent)
        self.checkable = True
        self.toggled.connect(lambda checked: self.stateChanged.emit(2 if checked else 0))


class QRadioButton(QCheckBox):
    pass


class QLabel(QWidget):
    def __init__(self, text_or_parent=None, parent=None) -> None:
        if isinstance(text_or_parent, str):
            super().__init__(parent)
            self.text = text_or_parent
        else:
            super().__init__(text_or_parent)
            self.text = ""
        self.wordWrap = False

    def setText(self, text: str) -> None:
        self.text = text


class QComboBox(QWidget):
    """Items and a current index; setting the index emits currentIndexChanged and currentTextChanged."""

    currentIndexChanged = Signal()
    currentTextChanged = Signal()
    activated = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._items: list = []
        self._currentIndex = -1

    @property
    def count(self) -> int:
        return len(self._items)

    @property
    def currentIndex(self) -> int:
        return self._currentIndex

    @currentIndex.setter
    def currentIndex(self, index: int) -> None:
        index = int(index) if 0 <= int(index) < len(self._items) else -1
        if index != self._currentIndex:
            self._currentIndex = index
            self.currentIndexChanged.emit(index)
            self.currentTextChanged.emit(self.currentText)

    def setCurrentIndex(self, index: int) -> None:
        self.currentIndex = index

    @property
    def currentText(self) -> str:
        return self._items[self._currentIndex] if self._currentIndex >= 0 else ""

    def setCurrentText(self, text: str) -> None:
        """Qt selects the matching item; a text not in the list changes nothing (not editable)."""
        index = self.findText(text)
        if index >= 0:
            self.currentIndex = index

    def addItem(self, text: str, userData=None) -> None:
        self._items.append(str(text))
        if self._currentIndex < 0:
            self.currentIndex = 0

    def addItems(self, texts) -> None:
        for text in texts:
            self.addItem(text)

    def itemText(self, index: int) -> str:
        return self._items[index]

    def findText(self, text: str) -> int:
        return self._items.index(text) if text in self._items else -1

    def clear(self) -> None:
        self._items = []
        self.currentIndex = -1


class QLineEdit(QWidget):
    textChanged = Signal()
    editingFinished = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._text = ""

    text = notifyingProperty("_text", "textChanged", str)

    def setText(self, value: str) -> None:
        self.text = value


class QProgressBar(QWidget):
    valueChanged = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.minimum = 0
        self.maximum = 100
        self._value = 0
        self.textVisible = True
        self.format = "%p%"

    value = notifyingProperty("_value", "valueChanged", int)

    def setValue(self, value: int) -> None:
        self.value = value


class QPlainTextEdit(QWidget):
    textChanged = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._plainText = ""
        self.readOnly = False

    plainText = notifyingProperty("_plainText", "textChanged", str)

    def setPlainText(self, text: str) -> None:
        self.plainText = text

    def toPlainText(self) -> str:
        return self._plainText


class QTextEdit(QPlainTextEdit):
    pass


class QSpinBox(QWidget):
    valueChanged = Signal()


class QDoubleSpinBox(QSpinBox):
    pass


class QSlider(QWidget):
    valueChanged = Signal()


class QDialog(QWidget):
    def exec_(self) -> int:
        return 0

    def close(self) -> None:
        self.visible = False


class QMenu(QWidget):
    pass


class QAction(QObject):
    triggered = Signal()


class QMessageBox(QDialog):
    NoButton = 0x0
    Ok = 0x400
    Cancel = 0x400000
    Yes = 0x4000
    No = 0x10000
    Retry = 0x80000
    Close = 0x200000
    Information, Warning, Critical, Question = 1, 2, 3, 4


class QFileDialog(QDialog):
    """QFileDialog's static getExistingDirectory, a modal dialog: the path of an existing folder, or ""
    when the user cancels (as Qt returns).

    Tests script what the user picks in `scriptedAnswers` (a path, or "" for Cancel); a dialog
    nobody scripted raises, because in Slicer it would block the user.  `shown` records the captions.
    """

    ShowDirsOnly = 0x1
    DontResolveSymlinks = 0x2

    scriptedAnswers: list = []
    shown: list = []

    @staticmethod
    def getExistingDirectory(parent=None, caption: str = "", directory: str = "", options: int = ShowDirsOnly) -> str:
        QFileDialog.shown.append(caption)
        if not QFileDialog.scriptedAnswers:
            raise AssertionError(f"unexpected modal dialog: {caption!r}")
        return QFileDialog.scriptedAnswers.pop(0)


class QColor:
    def __init__(self, *args) -> None:
        self.args = args

    def name(self, *args) -> str:
        return "#000000"


class QIcon:
    def __init__(self, path: str = "") -> None:
        self.path = path


class QSizePolicy:
    Preferred = 5

    def __init__(self, *args) -> None:
        pass


class Qt:
    Unchecked, PartiallyChecked, Checked = 0, 1, 2
    WaitCursor = 16
    ShiftModifier = 0x02000000
    Vertical = 2


class QSettings:
    """Application settings: empty, as on a fresh install (developer mode off)."""

    store: dict = {}

    def contains(self, key: str) -> bool:
        return key in self.store

    def value(self, key: str, default=None):
        return self.store.get(key, default)

    def setValue(self, key: str, value) -> None:
        self.store[key] = value


class QTimer(QObject):
    """A timer fired by the stand-in event loop (slicer.app.processEvents), never by itself."""

    timeout = Signal()
    _active: list = []

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.interval = 0
        self.singleShot_ = False
        self._due = None

    def setInterval(self, msec: int) -> None:
        self.interval = int(msec)

    def start(self, msec: int = None) -> None:
        if msec is not None:
            self.interval = int(msec)
        self._due = time.monotonic() + self.interval / 1000.0
        if self not in QTimer._active:
            QTimer._active.append(self)

    def stop(self) -> None:
        self._due = None
        if self in QTimer._active:
            QTimer._active.remove(self)

    def isActive(self) -> bool:
        return self in QTimer._active

    @staticmethod
    def singleShot(msec: int, callback) -> None:
        timer = QTimer()
        timer.singleShot_ = True
        timer.timeout.connect(callback)
        timer.start(msec)

    @classmethod
    def fireDueTimers(cls) -> None:
        now = time.monotonic()
        for timer in list(cls._active):
            if timer._due is not None and timer._due <= now:
                if timer.singleShot_:
                    timer.stop()
                else:
                    timer._due = now + timer.interval / 1000.0
                timer.timeout.emit()


class QFile:
    ReadOnly = 1

    def __init__(self, path: str) -> None:
        self.path = str(path)

    def exists(self) -> bool:
        import os

        return os.path.isfile(self.path)

    def open(self, mode) -> bool:
        return self.exists()

    def close(self) -> None:
        pass


class QUiLoader:
    """Builds widgets from a Qt Designer file as QUiLoader does: classes, names, properties,
    combo items, layouts (widgets become children of the layout's widget) and the
    <connections> section.  An unknown widget class raises: the real loader would need a
    designer plugin for it, which is exactly what must not be assumed."""

    def load(self, qfile):
        root = ElementTree.parse(qfile.path).getroot()
        widgets: dict = {}
        top = self._build(root.find("widget"), None, widgets)
        for connection in root.iter("connection"):
            sender = widgets[connection.findtext("sender")]
            receiver = widgets[connection.findtext("receiver")]
            slotName = connection.findtext("slot").split("(")[0]
            sender.connect(connection.findtext("signal"), getattr(receiver, slotName))
        return top

    def _build(self, element, parent, widgets: dict):
        widget = _widgetClass(element.get("class"))(parent)
        widget.objectName = element.get("name", "")
        widgets[widget.objectName] = widget
        for prop in element.findall("property"):
            _applyProperty(widget, prop)
        items = [item.findtext("property/string") or "" for item in element.findall("item")]
        if items:
            widget.addItems(items)
        for child in _childWidgetElements(element):
            self._build(child, widget, widgets)
        return widget


def _widgetClass(className: str):
    import ctk
    import slicer

    for module in (globals(), vars(ctk), vars(slicer)):
        if className in module:
            return module[className]
    raise ValueError(f"no stand-in for widget class {className}")


def _childWidgetElements(element) -> list:
    """<widget> elements inside element, through layouts and items but not through other widgets."""
    found = []
    for child in element:
        if child.tag == "widget":
            found.append(child)
        elif child.tag in ("layout", "item"):
            found.extend(_childWidgetElements(child))
    return found


def _applyProperty(widget, prop) -> None:
    name = prop.get("name")
    value = _propertyValue(prop[0])
    if prop.get("stdset") == "0":
        widget.setProperty(name, value)
    elif name not in ("geometry", "sizePolicy", "orientation", "minimumSize", "maximumSize"):
        setattr(widget, name, value)


def _propertyValue(child):
    if child.tag == "bool":
        return child.text == "true"
    if child.tag == "number":
        return int(child.text)
    if child.tag == "stringlist":
        return tuple(s.text or "" for s in child.findall("string"))
    if child.tag == "set":
        return child.text or ""
    return child.text or ""
