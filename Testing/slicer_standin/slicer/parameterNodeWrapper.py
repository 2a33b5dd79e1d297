"""A minimal parameterNodeWrapper: typed attributes stored in a scripted module node.

Like Slicer's, values live in the MRML node (node references by ID), each
change fires the node's ModifiedEvent, and `connectGui(ui)` binds every widget
whose dynamic property SlicerParameterName names a parameter, both ways.
"""

from __future__ import annotations

import typing

from .mrml import vtkMRMLNode

_BINDINGS = {
    # widget class -> (signal, read widget, write widget)
    "qMRMLNodeComboBox": ("currentNodeChanged", lambda w: w.currentNode(), lambda w, v: w.setCurrentNode(v)),
    "QCheckBox": ("toggled", lambda w: w.checked, lambda w, v: w.setChecked(v)),
    "QComboBox": ("currentTextChanged", lambda w: w.currentText, lambda w, v: w.setCurrentText(v)),
    "ctkPathLineEdit": ("currentPathChanged", lambda w: w.currentPath, lambda w, v: w.setCurrentPath(str(v))),
}


def _isNodeType(annotation) -> bool:
    candidates = typing.get_args(annotation) or (annotation,)
    return any(isinstance(c, type) and issubclass(c, vtkMRMLNode) for c in candidates)


def _binding(widget):
    for cls in type(widget).__mro__:
        if cls.__name__ in _BINDINGS:
            return _BINDINGS[cls.__name__]
    raise TypeError(f"no parameter binding for widget class {type(widget).__name__}")


def parameterNodeWrapper(cls):
    """Class decorator turning annotated attributes into parameters of a MRML node."""
    hints = typing.get_type_hints(cls)
    defaults = {name: getattr(cls, name, None) for name in hints}
    nodeParameters = {name for name, hint in hints.items() if _isNodeType(hint)}

    class Wrapper:
        __name__ = cls.__name__
        __qualname__ = cls.__qualname__

        def __init__(self, parameterNode) -> None:
            object.__setattr__(self, "parameterNode", parameterNode)
            object.__setattr__(self, "_gui", {})

        def __getattr__(self, name):
            if name not in hints:
                raise AttributeError(name)
            node = self.parameterNode
            if name in nodeParameters:
                nodeID = node.references.get(name)
                return node.GetScene().GetNodeByID(nodeID) if nodeID and node.GetScene() else None
            return node.parameters.get(name, defaults[name])

        def __setattr__(self, name, value) -> None:
            if name not in hints:
                raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
            if getattr(self, name) is value or (name not in nodeParameters and getattr(self, name) == value):
                return
            if name in nodeParameters:
                self.parameterNode.references[name] = value.GetID() if value is not None else None
            else:
                self.parameterNode.parameters[name] = value
            for tag in self._gui.values():
                for widget, parameter in tag:
                    if parameter == name:
                        _binding(widget)[2](widget, value)
            self.parameterNode.Modified()

        def AddObserver(self, event, callback, priority: float = 0.0):
            return self.parameterNode.AddObserver(event, callback, priority)

        def RemoveObserver(self, tag) -> None:
            self.parameterNode.RemoveObserver(tag)

        def connectGui(self, ui):
            widgets = [w for w in vars(ui).values() if hasattr(w, "property") and w.property("SlicerParameterName")]
            tag = []
            for widget in widgets:
                name = widget.property("SlicerParameterName")
                if name not in hints:
                    raise ValueError(f"widget {widget.objectName} is bound to unknown parameter {name!r}")
                signal, read, write = _binding(widget)
                write(widget, getattr(self, name))
                widget.connect(signal, lambda *args, n=name, w=widget, r=read: setattr(self, n, r(w)))
                tag.append((widget, name))
            self._gui[id(tag)] = tag
            return id(tag)

        def disconnectGui(self, tagID) -> None:
            for widget, _name in self._gui.pop(tagID, []):
                widget._slots.pop(_binding(widget)[0], None)

    Wrapper.__doc__ = cls.__doc__
    return Wrapper
