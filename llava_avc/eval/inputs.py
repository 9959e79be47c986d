"""The inputs of `llava-avc ask` and `llava-avc eval`, checked before any model loads: images (missing,
a directory, damaged, too small) and the questions read from a benchmark file (the type of every
field). Every problem is one line naming the file (and line), what is wrong and the fix."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

#: The smallest side an image may have: LLaVA's CLIP preprocessing takes a side of 1 pixel for the
#: colour-channel axis ("mean must have 1 elements if it is an iterable, got 3").
MIN_SIDE = 2
#: The image placeholder of LLaVA prompts; llava-avc puts it before the question itself, once.
IMAGE_PLACEHOLDER = "<image>"


def image_placeholder_problem(text: str) -> str | None:
    """Why a question's text cannot be used as it is: it writes the image placeholder itself (every
    '<image>' becomes an image, and the prompt gets one image: a second would be asked for)."""
    count = text.count(IMAGE_PLACEHOLDER)
    if count == 0:
        return None
    return (f"contains {IMAGE_PLACEHOLDER!r} {count} time(s); llava-avc puts the image before the question "
            f"itself, once: remove {IMAGE_PLACEHOLDER!r} from the question")


def check_query(query, what: str = "--query") -> str:
    """The question as text a tokenizer can take: a non-empty str that is valid UTF-8.

    A command-line argument with bytes that are not UTF-8 (e.g. Latin-1 text) reaches Python with
    surrogate escapes, which the tokenizers cannot encode.
    """
    if not isinstance(query, str):
        raise UserError(f"{what} (={query!r}) must be text (a str).")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = query[error.start:error.end].encode("utf-8", "surrogateescape")
        raise UserError(f"{what} is not valid UTF-8 text (bytes {bad!r} at character {error.start}); pass the "
                        "question as UTF-8 (e.g. convert it with iconv -t UTF-8).") from None
    if not query.strip():
        raise UserError(f"{what} is empty; ask a question, e.g. --query 'Is there a dog in the image?'.")
    problem = image_placeholder_problem(query)
    if problem is not None:
        raise UserError(f"{what} (={query!r}) {problem}.")
    return query


def _file_in_the_way(folder: Path):
    """The file that stands where `folder` or one of its parents should be a folder, else None (the
    nearest existing one of them is the only one that can be a file)."""
    nearest = next((p for p in [folder, *folder.parents] if p.exists()), None)
    return nearest if nearest is not None and not nearest.is_dir() else None


def check_output_file(path, what: str) -> None:
    """Refuse, before any model work, an output path that is a directory or whose folder is a file."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{what} {str(target)!r} is a directory; give a file name such as blind.png.")
    blocking = _file_in_the_way(target.absolute().parent)
    if blocking is not None:
        raise UserError(f"{what} {str(target)!r}: {str(blocking)!r} is a file, not a folder; choose another path.")


def check_png_file(path, what: str) -> None:
    """Refuse, before any model work, a picture path that is a directory, lies under a file, or does not
    end in .png (the picture is written as PNG)."""
    check_output_file(path, what)
    if Path(path).suffix.lower() != ".png":
        raise UserError(f"{what} (={str(path)!r}) must name a .png file: the picture is written as PNG; e.g. "
                        f"{what} {Path(path).with_suffix('.png').name}.")


def check_output_folder(path, what: str) -> None:
    """Refuse, before anything is written, a run folder that is a file or lies under one."""
    blocking = _file_in_the_way(Path(path).expanduser())
    if blocking is not None:
        raise UserError(f"{what} (={path!r}) must be a folder, but {str(blocking)!r} is a file; choose another "
                        f"{what}.")


def parse_json(text: str, where: str, fix: str):
    """`json.loads(text)`, or a UserError naming `where` (a file, or "file, line N"), the position and `fix`."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{where}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); "
                        f"{fix}.") from None


def read_json_file(path, fix: str, read=None):
    """The JSON value in the file `path` (read with `read`, default UTF-8 text), or a UserError naming it."""
    text = read(path) if read is not None else Path(path).read_text(encoding="utf-8")
    return parse_json(text, str(path), fix)


def image_problem(path) -> str | None:
    """Why `path` cannot be an image file (missing, a directory), else None."""
    path = Path(path)
    if path.is_dir():
        return f"{str(path)!r} is a directory, not an image file"
    if not path.exists():
        return f"image file {str(path)!r} does not exist"
    return None


def check_size(image, label: str) -> None:
    """Raise ValueError when an image is too small for LLaVA's preprocessing."""
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise UserError(f"{label} is {width}x{height} pixels; images need at least {MIN_SIDE} pixels on each side "
                        "(LLaVA's CLIP preprocessing reads a 1-pixel side as the colour axis); use a larger image.")


def open_rgb(path, label: str | None = None):
    """The image at `path` as an RGB PIL image, fully decoded.

    Raises:
        UserError: missing file, or a directory.
        ValueError: not an image PIL can read, truncated or damaged, or too small.
    """
    from PIL import Image, UnidentifiedImageError

    label = label or f"image {str(path)!r}"
    problem = image_problem(path)
    if problem is not None:
        raise UserError(f"{problem}; pass an image file (JPEG, PNG, ...).")
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except UnidentifiedImageError:
        raise UserError(f"{label} cannot be read: it is not an image PIL can read (JPEG, PNG, ...); check the "
                        "file.") from None
    except OSError as error:  # truncated or damaged data
        raise UserError(f"{label} cannot be read ({error}); the file is damaged or incomplete: copy or "
                        "download it again.") from None
    check_size(rgb, label)
    return rgb


def field_problem(name: str, value, kinds: tuple, non_empty: bool) -> str | None:
    """Why a question record's field `name` is not of `kinds` (or is blank, with `non_empty`), else None."""
    if isinstance(value, bool) or not isinstance(value, kinds):
        wanted = " or ".join({int: "an integer", str: "a string"}[kind] for kind in kinds)
        return f"{name!r} is {value!r} ({type(value).__name__}); it must be {wanted}"
    if non_empty and isinstance(value, str) and not value.strip():
        return f"{name!r} is empty; it must be a non-empty string"
    return None


def check_questions(questions: list, question_file) -> list:
    """Check the type of every question's fields before anything is answered: the id an integer or a
    string, the image and the text non-empty strings, label and category strings when present.

    Raises:
        ValueError: no questions at all, or the first bad field, naming the file, its line and the fix.
    """
    if not questions:
        raise UserError(f"{question_file} holds no questions; pass the benchmark's question file (e.g. "
                        "coco_pope_random.json).")
    for question in questions:
        problem = (field_problem("question_id", question.qid, (int, str), True)
                   or field_problem("image", question.image, (str,), True)
                   or field_problem("text", question.text, (str,), True)
                   or (None if question.label is None else field_problem("label", question.label, (str,), False))
                   or (None if question.category is None
                       else field_problem("category", question.category, (str,), False))
                   or _placeholder_problem(question.text))
        if problem is not None:
            where = question.source or str(question_file)
            raise UserError(f"{where}: {problem}; fix that record (nothing was answered).")
    return questions


def _placeholder_problem(text) -> str | None:
    problem = image_placeholder_problem(text)
    return None if problem is None else f"'text' {problem}"
