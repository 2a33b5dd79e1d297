"""Stand-in for CTK's compiled widgets, with the behaviour Slicer's Python layer and the module rely on.

ctkPathLineEdit follows Libs/Widgets/ctkPathLineEdit.cpp: every change of the
text whose value the validator accepts emits currentPathChanged (so typing a
path emits once per keystroke), an empty text never does; with name filters
such as "Preset table (*.json)" only matching texts are accepted, without any
every non-empty text is (the validator pattern is ".+").
"""

from __future__ import annotations

import fnmatch
import re

import qt
from qt import QComboBox, QWidget, Signal


class ctkCollapsibleButton(qt.QAbstractButton):
    contentsCollapsed = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._collapsed = False

    collapsed = qt.notifyingProperty("_collapsed", "contentsCollapsed", bool)


class ctkPathLineEdit(QWidget):
    """A path line edit: currentPath, filters, nameFilters and the keystroke-level signals of CTK."""

    currentPathChanged = Signal()
    validInputChanged = Signal()

    Dirs, Files, Drives, NoDotAndDotDot, AllDirs = 0x001, 0x002, 0x004, 0x1000, 0x400
    Readable, Writable, Executable, Exists = 0x010, 0x020, 0x040, 0x8000

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._text = ""
        self.filters = self.AllDirs | self.Drives | self.Files | self.NoDotAndDotDot
        self._nameFilters: tuple = ()
        self._hasValidInput = False

    @property
    def nameFilters(self) -> tuple:
        return self._nameFilters

    @nameFilters.setter
    def nameFilters(self, filters) -> None:
        self._nameFilters = (filters,) if isinstance(filters, str) else tuple(filters)

    def _accepts(self, text: str) -> bool:
        """ctkUtils nameFiltersToRegExpPattern: the wildcards inside "Label (*.ext)", or ".+"."""
        if not text:
            return False
        patterns = [p for f in self._nameFilters for p in re.findall(r"\(([^)]*)\)", f) or [f]]
        wildcards = [w for p in patterns for w in p.split()]
        return not wildcards or any(fnmatch.fnmatch(text, w) for w in wildcards)

    @property
    def currentPath(self) -> str:
        return self._text

    @currentPath.setter
    def currentPath(self, path: str) -> None:
        self.setCurrentPath(path)

    def setCurrentPath(self, path: str) -> None:
        if path != self._text:
            self._setText(path)

    def simulateTyping(self, text: str) -> None:
        """Stand-in helper: a user typing `text` at the end of the field, one key at a time."""
        for character in text:
            self._setText(self._text + character)

    def simulateClearing(self) -> None:
        """Stand-in helper: a user selecting the text and deleting it."""
        self._setText("")

    def _setText(self, text: str) -> None:
        self._text = text
        valid = self._accepts(text)
        if valid != self._hasValidInput:
            self._hasValidInput = valid
            self.validInputChanged.emit(valid)
        if valid:
            self.currentPathChanged.emit(text)


class ctkMessageBox(qt.QMessageBox):
    """The dialog of slicer.util.messageBox outside testing mode.

    Tests script the user's answers in `scriptedAnswers` (e.g. [qt.QMessageBox.Cancel]);
    a dialog nobody scripted raises, because in Slicer it would block the user.
    """

    scriptedAnswers: list = []
    shown: list = []

    def __init__(self, parent=None) -> None:
        super().__init__(None)
        self.text = ""
        self.detailedText = ""
        self.windowTitle = ""
        self.icon = None
        self.standardButtons = qt.QMessageBox.Ok
        self.dontShowAgainSettingsKey = ""

    def exec_(self) -> int:
        ctkMessageBox.shown.append(self.text)
        if not ctkMessageBox.scriptedAnswers:
            raise AssertionError(f"unexpected modal dialog: {self.text!r}")
        return ctkMessageBox.scriptedAnswers.pop(0)


class ctkComboBox(QComboBox):
    pass


class ctkCheckBox(qt.QCheckBox):
    pass


class ctkCheckablePushButton(qt.QPushButton):
    pass


class ctkSliderWidget(QWidget):
    valueChanged = Signal()


class ctkDoubleSlider(ctkSliderWidget):
    pass


class ctkDoubleSpinBox(ctkSliderWidget):
    pass


class ctkRangeWidget(QWidget):
    valuesChanged = Signal()


class ctkDoubleRangeSlider(ctkRangeWidget):
    pass


class ctkDirectoryButton(QWidget):
    directoryChanged = Signal()


class ctkColorPickerButton(QWidget):
    colorChanged = Signal()
