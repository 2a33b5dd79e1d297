"""CTK widget stubs of the stand-in."""

from qt import QWidget


class ctkCollapsibleButton(QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.collapsed = False


class ctkPathLineEdit(QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.currentPath = ""

    def setCurrentPath(self, path: str) -> None:
        if path != self.currentPath:
            self.currentPath = path
            self.emit("currentPathChanged", path)
