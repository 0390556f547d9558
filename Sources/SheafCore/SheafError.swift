/// Every failure Sheaf reports: each case renders as one line naming the operation, the
/// shapes or file involved and what was expected.
public enum SheafError: Error, CustomStringConvertible, Equatable, Sendable {
    /// Empty or mismatched operands: `op` is the operation, `detail` the shapes.
    case shapeMismatch(op: String, detail: String)
    /// A NaN or infinity in an input: `what` names the operand and position.
    case nonFinite(op: String, what: String)
    case invalidArgument(op: String, detail: String)
    /// A matrix given to a symmetric factorisation is not symmetric.
    case notSymmetric(op: String, detail: String)
    /// Cholesky failed even after the diagonal shift.
    case notPositiveDefinite(op: String, detail: String)
    /// A LAPACK routine returned a non-zero `info`.
    case lapack(routine: String, info: Int32, detail: String)
    /// An OpenCL call failed: the call, its error code and name, and for builds the log.
    case openCL(call: String, code: Int32, detail: String)
    case kernelBuild(file: String, device: String, log: String)
    /// A backend that was asked for by name cannot start.
    case backendUnavailable(name: String, reason: String)
    case io(path: String, detail: String)

    public var description: String {
        switch self {
        case .shapeMismatch(let op, let detail): "\(op): shape mismatch: \(detail)"
        case .nonFinite(let op, let what): "\(op): non-finite value in \(what)"
        case .invalidArgument(let op, let detail): "\(op): \(detail)"
        case .notSymmetric(let op, let detail): "\(op): matrix is not symmetric: \(detail)"
        case .notPositiveDefinite(let op, let detail): "\(op): not positive definite: \(detail)"
        case .lapack(let routine, let info, let detail): "LAPACK \(routine) failed (info \(info)): \(detail)"
        case .openCL(let call, let code, let detail):
            "OpenCL \(call) failed with \(code) (\(openCLErrorName(code)))" + (detail.isEmpty ? "" : ": \(detail)")
        case .kernelBuild(let file, let device, let log):
            "OpenCL kernel build of \(file).cl failed on \(device): "
                + log.split(separator: "\n").prefix(12).joined(separator: " | ")
        case .backendUnavailable(let name, let reason): "backend '\(name)' is unavailable: \(reason)"
        case .io(let path, let detail): "\(path): \(detail)"
        }
    }
}

/// The symbolic name of an OpenCL error code (CL/cl.h).
public func openCLErrorName(_ code: Int32) -> String {
    let names: [Int32: String] = [
        0: "CL_SUCCESS", -1: "CL_DEVICE_NOT_FOUND", -2: "CL_DEVICE_NOT_AVAILABLE",
        -3: "CL_COMPILER_NOT_AVAILABLE", -4: "CL_MEM_OBJECT_ALLOCATION_FAILURE",
        -5: "CL_OUT_OF_RESOURCES", -6: "CL_OUT_OF_HOST_MEMORY",
        -7: "CL_PROFILING_INFO_NOT_AVAILABLE", -8: "CL_MEM_COPY_OVERLAP", -9: "CL_IMAGE_FORMAT_MISMATCH",
        -10: "CL_IMAGE_FORMAT_NOT_SUPPORTED", -11: "CL_BUILD_PROGRAM_FAILURE", -12: "CL_MAP_FAILURE",
        -13: "CL_MISALIGNED_SUB_BUFFER_OFFSET", -14: "CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST",
        -30: "CL_INVALID_VALUE", -31: "CL_INVALID_DEVICE_TYPE", -32: "CL_INVALID_PLATFORM",
        -33: "CL_INVALID_DEVICE", -34: "CL_INVALID_CONTEXT", -35: "CL_INVALID_QUEUE_PROPERTIES",
        -36: "CL_INVALID_COMMAND_QUEUE", -37: "CL_INVALID_HOST_PTR", -38: "CL_INVALID_MEM_OBJECT",
        -42: "CL_INVALID_BINARY", -43: "CL_INVALID_BUILD_OPTIONS", -44: "CL_INVALID_PROGRAM",
        -45: "CL_INVALID_PROGRAM_EXECUTABLE", -46: "CL_INVALID_KERNEL_NAME",
        -47: "CL_INVALID_KERNEL_DEFINITION", -48: "CL_INVALID_KERNEL", -49: "CL_INVALID_ARG_INDEX",
        -50: "CL_INVALID_ARG_VALUE", -51: "CL_INVALID_ARG_SIZE", -52: "CL_INVALID_KERNEL_ARGS",
        -53: "CL_INVALID_WORK_DIMENSION", -54: "CL_INVALID_WORK_GROUP_SIZE",
        -55: "CL_INVALID_WORK_ITEM_SIZE", -56: "CL_INVALID_GLOBAL_OFFSET",
        -57: "CL_INVALID_EVENT_WAIT_LIST", -58: "CL_INVALID_EVENT", -59: "CL_INVALID_OPERATION",
        -61: "CL_INVALID_BUFFER_SIZE", -63: "CL_INVALID_GLOBAL_WORK_SIZE",
        -1001: "CL_PLATFORM_NOT_FOUND_KHR",
    ]
    return names[code] ?? "unknown OpenCL error"
}
