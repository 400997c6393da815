"""Sans-I/O NVMe/TCP: the PDU codec and NVMe structures both the initiator and the target use.

A leaf package (h11-style, no sockets): it imports only `pifarm.errors`, and both the
initiator and the target import it; the node side never imports pifarm.target.
"""

from pifarm.nvmewire._codec import NEED_DATA, TRANSITIONS, Codec, Role, State, crc32c
from pifarm.nvmewire._errors import LocalProtocolError, NvmeStatusError, RemoteProtocolError
from pifarm.nvmewire._identify import (
    ADRFAM_IPV4, ADRFAM_IPV6, SUBTYPE_CURRENT_DISCOVERY, SUBTYPE_NVME, SUBTYPE_REFERRAL, TRTYPE_TCP,
    DiscoveryEntry, DiscoveryLog, IdentifyController, IdentifyNamespace, NsDescriptors, pack_ns_list,
    unpack_ns_list,
)
from pifarm.nvmewire._pdu import (
    C2HData, CapsuleCmd, CapsuleResp, Fes, Flag, H2CData, ICReq, ICResp, Pdu, PduType, R2T, TermReq,
)
from pifarm.nvmewire._sqe import (
    AUTH_SECP_DHCHAP, DISCOVERY_NQN, DNR, SGL_INCAPSULE, SGL_TRANSPORT, Cns, ConnectData, Cqe, FcType, Feature, Lid, Opcode, Prop,
    Sgl, Sqe, auth_receive, auth_send, connect_cmd, connect_fields, get_log_page, identify, keep_alive, log_page_fields, property_get,
    property_set, read_cmd, rw_fields, set_features, write_cmd,
)
from pifarm.nvmewire._status import MESSAGES, check_status, status_message
from pifarm.nvmewire import _status as status

__all__ = [
    "ADRFAM_IPV4", "ADRFAM_IPV6", "AUTH_SECP_DHCHAP", "auth_receive", "auth_send", "C2HData", "CapsuleCmd", "CapsuleResp", "Cns", "Codec", "ConnectData", "Cqe",
    "DISCOVERY_NQN", "DNR", "DiscoveryEntry", "DiscoveryLog", "FcType", "Feature", "Fes", "Flag", "H2CData",
    "ICReq", "ICResp", "IdentifyController", "IdentifyNamespace", "Lid", "LocalProtocolError", "MESSAGES",
    "NEED_DATA", "NsDescriptors", "NvmeStatusError", "Opcode", "Pdu", "PduType", "Prop", "R2T",
    "RemoteProtocolError", "Role", "SGL_INCAPSULE", "SGL_TRANSPORT", "SUBTYPE_CURRENT_DISCOVERY", "SUBTYPE_NVME",
    "SUBTYPE_REFERRAL", "Sgl", "Sqe", "State", "TRANSITIONS", "TRTYPE_TCP", "TermReq", "check_status",
    "connect_cmd", "connect_fields", "crc32c", "get_log_page", "identify", "keep_alive", "log_page_fields",
    "pack_ns_list", "property_get", "property_set", "read_cmd", "rw_fields", "set_features", "status",
    "status_message", "unpack_ns_list", "write_cmd",
]
