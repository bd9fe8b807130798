"""The 3D view: VTK volume rendering of a document inside Qt, seen from the front (anterior, head
up). Importing this module imports VTK, so the viewer imports it only when the 3D tab opens."""
from __future__ import annotations

import numpy as np
from PySide6.QtWidgets import QVBoxLayout, QWidget
from vtkmodules.qt.QVTKRenderWindowInteractor import QVTKRenderWindowInteractor
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPiecewiseFunction
from vtkmodules.vtkInteractionStyle import vtkInteractorStyleTrackballCamera
from vtkmodules.vtkRenderingCore import (
    vtkColorTransferFunction,
    vtkRenderer,
    vtkVolume,
    vtkVolumeProperty,
    vtkWindowToImageFilter,
)
from vtkmodules.vtkRenderingVolumeOpenGL2 import vtkSmartVolumeMapper

from app.state.workspace import Document
from engine import modalities

MAX_RENDER_SIZE = 192     # voxels along the longest axis; larger volumes are subsampled


def image_data(doc: Document) -> vtkImageData:
    """The document's voxels (subsampled to MAX_RENDER_SIZE) with spacing, origin and direction,
    in a right-handed index frame: VTK's ray caster draws nothing through a left-handed one."""
    volume = doc.volume
    step = max(1, int(np.ceil(max(volume.shape) / MAX_RENDER_SIZE)))
    array = volume.array[::step, ::step, ::step]
    direction = volume.direction_matrix.copy()
    origin = np.asarray(volume.origin)
    if np.linalg.det(direction) < 0:             # same voxels in space, index x reversed
        origin = (volume.index_to_lps() @ np.array([step * (array.shape[2] - 1), 0, 0, 1.0]))[:3]
        direction[:, 0] *= -1
        array = array[:, :, ::-1]
    array = np.ascontiguousarray(array, dtype=np.float32)
    data = vtkImageData()
    data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    data.SetSpacing(*(s * step for s in volume.spacing))
    data.SetOrigin(*origin)
    data.SetDirectionMatrix(tuple(direction.ravel()))
    scalars = numpy_to_vtk(array.ravel(), deep=True)
    scalars.SetName("values")
    data.GetPointData().SetScalars(scalars)
    return data


def transfer_functions(doc: Document) -> tuple[vtkColorTransferFunction, vtkPiecewiseFunction]:
    """Colour and opacity: skin and bone for CT, a ramp over the upper part of the window otherwise."""
    colour, opacity = vtkColorTransferFunction(), vtkPiecewiseFunction()
    family = None
    if doc.volume.modality:
        family = modalities.get(doc.volume.modality).family
    if family == "CT":
        for hu, rgb, alpha in ((-1024, (0, 0, 0), 0.0), (-500, (0.55, 0.25, 0.15), 0.0),
                               (-100, (0.9, 0.6, 0.45), 0.04), (150, (0.9, 0.8, 0.7), 0.06),
                               (400, (1.0, 0.95, 0.85), 0.5), (1500, (1, 1, 1), 0.85)):
            colour.AddRGBPoint(hu, *rgb)
            opacity.AddPoint(hu, alpha)
        return colour, opacity
    lo, hi = doc.display.levels
    start = lo + 0.25 * (hi - lo)
    colour.AddRGBPoint(lo, 0, 0, 0)
    colour.AddRGBPoint(hi, 1, 0.95, 0.9)
    opacity.AddPoint(lo, 0.0)
    opacity.AddPoint(start, 0.0)
    opacity.AddPoint(hi, 0.6)
    return colour, opacity


class VolumeRenderView(QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.vtk_widget = QVTKRenderWindowInteractor(self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.vtk_widget)
        self.renderer = vtkRenderer()
        self.renderer.SetBackground(0.05, 0.05, 0.08)
        self.render_window = self.vtk_widget.GetRenderWindow()
        self.render_window.AddRenderer(self.renderer)
        self.vtk_widget.SetInteractorStyle(vtkInteractorStyleTrackballCamera())
        self.vtk_widget.Initialize()
        self._volume: vtkVolume | None = None

    def show_document(self, doc: Document) -> None:
        mapper = vtkSmartVolumeMapper()
        mapper.SetInputData(image_data(doc))
        colour, opacity = transfer_functions(doc)
        prop = vtkVolumeProperty()
        prop.SetColor(colour)
        prop.SetScalarOpacity(opacity)
        prop.SetInterpolationTypeToLinear()
        prop.ShadeOn()
        if self._volume is not None:
            self.renderer.RemoveVolume(self._volume)
        self._volume = vtkVolume()
        self._volume.SetMapper(mapper)
        self._volume.SetProperty(prop)
        self.renderer.AddVolume(self._volume)
        self._look_from_the_front()
        self.render_window.Render()

    def clear(self) -> None:
        if self._volume is not None:
            self.renderer.RemoveVolume(self._volume)
            self._volume = None
            self.render_window.Render()

    def _look_from_the_front(self) -> None:
        self.renderer.ResetCamera()
        camera = self.renderer.GetActiveCamera()
        focal = np.asarray(camera.GetFocalPoint())
        distance = camera.GetDistance()
        camera.SetPosition(*(focal + np.array([0.0, -distance, 0.0])))    # anterior is −y in LPS
        camera.SetViewUp(0.0, 0.0, 1.0)                                   # superior up
        self.renderer.ResetCamera()

    def rendered_image(self) -> np.ndarray:
        """The render window's pixels as (height, width, 3) uint8."""
        self.render_window.Render()
        grab = vtkWindowToImageFilter()
        grab.SetInput(self.render_window)
        grab.ReadFrontBufferOff()
        grab.Update()
        output = grab.GetOutput()
        w, h, _ = output.GetDimensions()
        pixels = vtk_to_numpy(output.GetPointData().GetScalars())
        return pixels.reshape(h, w, -1)[::-1, :, :3]

    def close_render_window(self) -> None:
        self.vtk_widget.Finalize()
