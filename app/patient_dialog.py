"""The patient of a DICOM export whose volume names none (read from a NIfTI, MHA or NRRD file, or
synthesized from one): a planning system or PACS files a series by its PatientID. Both fields may stay
empty (the export then names no patient); a value DICOM cannot hold disables Export, saying why."""
from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit, QVBoxLayout

if TYPE_CHECKING:
    from engine.io.volume import Volume

QUESTION = ("<b>{title}</b> names no patient (it {made}). A planning system or "
            "PACS files a DICOM series by its Patient ID: name the patient to import it there, or leave both "
            "fields empty to export it without one.")


class PatientDialog(QDialog):
    """Patient ID and name for a DICOM export; :meth:`patient` gives them once accepted."""

    def __init__(self, title: str, volume: Volume, last: tuple[str, str] = ("", ""), parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Name the patient")
        self.setMinimumWidth(480)
        self.volume = volume
        question = QLabel(QUESTION.format(title=title, made="was made from a scan that names none" if volume.synthetic
                                          else "comes from a file that holds none"))
        question.setWordWrap(True)
        self.patient_id, self.patient_name = QLineEdit(last[0]), QLineEdit(last[1])
        self.patient_name.setPlaceholderText("Family^Given")
        self.problem = QLabel()
        self.problem.setStyleSheet("color:#b01010")
        self.problem.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Patient ID", self.patient_id)
        form.addRow("Patient name", self.patient_name)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Export")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(question)
        layout.addLayout(form)
        layout.addWidget(self.problem)
        layout.addWidget(self.buttons)
        for field in (self.patient_id, self.patient_name):
            field.textChanged.connect(self._check)
        self._check()

    def patient(self) -> tuple[str, str]:
        return self.patient_id.text().strip(), self.patient_name.text().strip()

    def _check(self) -> None:
        from engine.io import named_patient

        try:
            named_patient(self.volume, *self.patient())
            problem = ""
        except ValueError as exc:
            problem = str(exc)
        self.problem.setText(problem)
        self.problem.setVisible(bool(problem))
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(not problem)
        # room for the message's lines, never over the question's; a size the user chose is kept
        self.resize(self.width(), max(self.height(), self.sizeHint().height()))
