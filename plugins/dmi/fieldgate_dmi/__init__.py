"""KubeEdge's Device Management Interface (DMI v1beta1) for fieldgate: the gateway serves DeviceManagerService so
unchanged KubeEdge mappers register with it, and drives their DeviceMapperService as documents change."""

__version__ = "0.1.0"
