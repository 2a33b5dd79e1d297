"""Translation functions: identity in the stand-in."""


def tr(text: str) -> str:
    return text


def translate(context: str, text: str) -> str:
    return text
