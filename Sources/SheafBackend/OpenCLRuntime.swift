import CKernels
import COpenCL
import Foundation
import SheafCore

/// Throws a typed error naming the OpenCL call when `code` is not CL_SUCCESS.
@inline(__always)
func clCheck(_ code: cl_int, _ call: @autoclosure () -> String, _ detail: @autoclosure () -> String = "")
    throws(SheafError)
{
    if code != CL_SUCCESS { throw .openCL(call: call(), code: code, detail: detail()) }
}

/// One OpenCL device as seen by `sheaf doctor` and by device selection.
public struct OpenCLDeviceInfo: Sendable, Codable {
    public var index: Int
    public var platform: String
    public var name: String
    public var type: String
    public var computeUnits: Int
    public var globalMemoryBytes: Int
    public var localMemoryBytes: Int
    public var maxWorkGroupSize: Int
    public var clockMHz: Int
    public var fp64: Bool
    public var driverVersion: String
    public var isGPU: Bool { type == "GPU" }
}

/// Enumerates OpenCL platforms and devices. An empty list when no ICD is installed.
public enum OpenCLDevices {
    struct Handle: @unchecked Sendable {
        let platform: cl_platform_id
        let device: cl_device_id
        let info: OpenCLDeviceInfo
    }

    public static func list() throws(SheafError) -> [OpenCLDeviceInfo] { try handles().map(\.info) }

    static func handles() throws(SheafError) -> [Handle] {
        var platformCount: cl_uint = 0
        let code = clGetPlatformIDs(0, nil, &platformCount)
        // -1001 (no ICD platform) and an empty list both mean "no OpenCL here".
        if code == -1001 || platformCount == 0 { return [] }
        try clCheck(code, "clGetPlatformIDs")
        var platforms = [cl_platform_id?](repeating: nil, count: Int(platformCount))
        try clCheck(clGetPlatformIDs(platformCount, &platforms, nil), "clGetPlatformIDs")
        var result: [Handle] = []
        for case let platform? in platforms {
            var deviceCount: cl_uint = 0
            let dc = clGetDeviceIDs(platform, cl_device_type(CL_DEVICE_TYPE_ALL), 0, nil, &deviceCount)
            if dc == CL_DEVICE_NOT_FOUND || deviceCount == 0 { continue }
            try clCheck(dc, "clGetDeviceIDs")
            var devices = [cl_device_id?](repeating: nil, count: Int(deviceCount))
            try clCheck(clGetDeviceIDs(platform, cl_device_type(CL_DEVICE_TYPE_ALL), deviceCount, &devices, nil), "clGetDeviceIDs")
            let platformName = try platformString(platform, cl_platform_info(CL_PLATFORM_NAME))
            for case let device? in devices {
                let type: cl_device_type = try deviceValue(device, CL_DEVICE_TYPE)
                let extensions = try deviceString(device, CL_DEVICE_EXTENSIONS)
                let info = OpenCLDeviceInfo(
                    index: result.count, platform: platformName, name: try deviceString(device, CL_DEVICE_NAME),
                    type: type & cl_device_type(CL_DEVICE_TYPE_GPU) != 0
                        ? "GPU" : type & cl_device_type(CL_DEVICE_TYPE_CPU) != 0 ? "CPU" : "other",
                    computeUnits: Int(try deviceValue(device, CL_DEVICE_MAX_COMPUTE_UNITS) as cl_uint),
                    globalMemoryBytes: Int(try deviceValue(device, CL_DEVICE_GLOBAL_MEM_SIZE) as cl_ulong),
                    localMemoryBytes: Int(try deviceValue(device, CL_DEVICE_LOCAL_MEM_SIZE) as cl_ulong),
                    maxWorkGroupSize: Int(try deviceValue(device, CL_DEVICE_MAX_WORK_GROUP_SIZE) as Int),
                    clockMHz: Int(try deviceValue(device, CL_DEVICE_MAX_CLOCK_FREQUENCY) as cl_uint),
                    fp64: extensions.contains("cl_khr_fp64"),
                    driverVersion: try deviceString(device, CL_DRIVER_VERSION))
                result.append(Handle(platform: platform, device: device, info: info))
            }
        }
        return result
    }

    /// The device for `selector` (an index, or a case-insensitive substring of the name):
    /// the first GPU when nil, else the first device.
    static func select(_ selector: String?) throws(SheafError) -> Handle {
        let all = try handles()
        guard !all.isEmpty else {
            throw .backendUnavailable(name: "opencl", reason: "no OpenCL platform or device found (is an ICD such as pocl-opencl-icd installed, and POCL_CACHE_DIR writable?)")
        }
        guard let selector, !selector.isEmpty else { return all.first(where: { $0.info.isGPU }) ?? all[0] }
        if let i = Int(selector) {
            guard all.indices.contains(i) else {
                throw .backendUnavailable(name: "opencl", reason: "device index \(i) out of range 0..<\(all.count)")
            }
            return all[i]
        }
        guard let match = all.first(where: { $0.info.name.lowercased().contains(selector.lowercased()) }) else {
            throw .backendUnavailable(
                name: "opencl",
                reason: "no device matches '\(selector)'; devices: " + all.map { "\($0.info.index): \($0.info.name)" }.joined(separator: ", "))
        }
        return match
    }

    private static func platformString(_ p: cl_platform_id, _ param: cl_platform_info) throws(SheafError) -> String {
        var size = 0
        try clCheck(clGetPlatformInfo(p, param, 0, nil, &size), "clGetPlatformInfo")
        var bytes = [CChar](repeating: 0, count: size + 1)
        try clCheck(clGetPlatformInfo(p, param, size, &bytes, nil), "clGetPlatformInfo")
        return decodeCString(bytes).trimmingCharacters(in: .whitespaces)
    }

    static func deviceString(_ d: cl_device_id, _ param: Int32) throws(SheafError) -> String {
        var size = 0
        try clCheck(clGetDeviceInfo(d, cl_device_info(param), 0, nil, &size), "clGetDeviceInfo")
        var bytes = [CChar](repeating: 0, count: size + 1)
        try clCheck(clGetDeviceInfo(d, cl_device_info(param), size, &bytes, nil), "clGetDeviceInfo")
        return decodeCString(bytes).trimmingCharacters(in: .whitespaces)
    }

    static func deviceValue<T: FixedWidthInteger>(_ d: cl_device_id, _ param: Int32) throws(SheafError) -> T {
        var value: T = 0
        let code = withUnsafeMutableBytes(of: &value) { raw in
            clGetDeviceInfo(d, cl_device_info(param), raw.count, raw.baseAddress, nil)
        }
        try clCheck(code, "clGetDeviceInfo")
        return value
    }
}

/// Kernel tunables per device type (see kernels/common.cl), passed as -D at build time.
public struct KernelTunables: Sendable, Equatable, Codable {
    public init(tileSize: Int, reductionStep: Int, useLocalMemory: Bool) {
        self.tileSize = tileSize
        self.reductionStep = reductionStep
        self.useLocalMemory = useLocalMemory
    }

    public var tileSize: Int        // TS
    public var reductionStep: Int   // TK
    public var useLocalMemory: Bool // USE_LOCAL

    /// GPUs: 64 x 64 tiles staged through local memory 16 steps at a time. CPU drivers (PoCL):
    /// direct global reads with a barrier every 128 reduction steps (measured in BENCHMARKS.md).
    public static func forDevice(_ info: OpenCLDeviceInfo) -> KernelTunables {
        info.isGPU
            ? KernelTunables(tileSize: 64, reductionStep: 16, useLocalMemory: true)
            : KernelTunables(tileSize: 64, reductionStep: 128, useLocalMemory: false)
    }

    var buildOptions: String {
        "-cl-std=CL1.2 -DTS=\(tileSize) -DTK=\(reductionStep) -DUSE_LOCAL=\(useLocalMemory ? 1 : 0)"
    }
}

/// The process's one OpenCL context and in-order queue per device (several contexts created
/// by parallel tests broke PoCL), and the kernels built on it. All enqueues are serialised.
final class OpenCLRuntime: @unchecked Sendable {
    let info: OpenCLDeviceInfo
    let device: cl_device_id
    let context: cl_context
    let queue: cl_command_queue
    let kernelDirectory: String?
    let lock = NSRecursiveLock()
    private var programs: [String: cl_program] = [:]
    private var kernels: [String: cl_kernel] = [:]

    nonisolated(unsafe) private static var cache: [String: OpenCLRuntime] = [:]
    private static let cacheLock = NSLock()

    /// The shared runtime for the selected device (see `OpenCLDevices.select`).
    static func shared(device selector: String?, kernelDirectory: String?) throws(SheafError) -> OpenCLRuntime {
        cacheLock.lock()
        defer { cacheLock.unlock() }
        let handle = try OpenCLDevices.select(selector)
        let key = "\(handle.info.index)|\(kernelDirectory ?? "")"
        if let runtime = cache[key] { return runtime }
        let runtime = try OpenCLRuntime(handle, kernelDirectory: kernelDirectory)
        cache[key] = runtime
        return runtime
    }

    private init(_ handle: OpenCLDevices.Handle, kernelDirectory: String?) throws(SheafError) {
        info = handle.info
        device = handle.device
        self.kernelDirectory = kernelDirectory
        guard info.fp64 else {
            throw .backendUnavailable(
                name: "opencl", reason: "device '\(info.name)' lacks cl_khr_fp64, needed for Float64 Gram accumulation")
        }
        var code: cl_int = 0
        var dev: cl_device_id? = handle.device
        guard let ctx = clCreateContext(nil, 1, &dev, nil, nil, &code) else {
            throw .openCL(call: "clCreateContext", code: code, detail: info.name)
        }
        try clCheck(code, "clCreateContext", info.name)
        context = ctx
        guard let q = clCreateCommandQueue(ctx, handle.device, 0, &code) else {
            clReleaseContext(ctx)
            throw .openCL(call: "clCreateCommandQueue", code: code, detail: info.name)
        }
        queue = q
    }

    /// Source of kernels/<file>.cl with common.cl in front: from `kernelDirectory` when set
    /// (kernel development), else the copy embedded at build time.
    func source(of file: String) throws(SheafError) -> String {
        func load(_ name: String) throws(SheafError) -> String {
            if let dir = kernelDirectory {
                let path = (dir as NSString).appendingPathComponent("\(name).cl")
                guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                    throw .io(path: path, detail: "cannot read kernel source (SHEAF_KERNEL_DIR)")
                }
                return text
            }
            for i in 0..<sheaf_kernel_count() {
                if let entry = sheaf_kernel_at(i), String(cString: entry.pointee.name) == name {
                    return String(cString: entry.pointee.source)
                }
            }
            throw .io(path: "kernels/\(name).cl", detail: "no such embedded kernel file")
        }
        return try load("common") + "\n#line 1 \"\(file).cl\"\n" + load(file)
    }

    /// The kernel `name` from kernels/<file>.cl built with `tunables`, built once per process.
    func kernel(_ name: String, in file: String, _ tunables: KernelTunables) throws(SheafError) -> cl_kernel {
        lock.lock()
        defer { lock.unlock() }
        let key = "\(name)|\(tunables.buildOptions)"
        if let k = kernels[key] { return k }
        let program = try program(file, tunables)
        var code: cl_int = 0
        guard let k = clCreateKernel(program, name, &code), code == CL_SUCCESS else {
            throw .openCL(call: "clCreateKernel", code: code, detail: "\(name) in \(file).cl")
        }
        kernels[key] = k
        return k
    }

    private func program(_ file: String, _ tunables: KernelTunables) throws(SheafError) -> cl_program {
        let key = "\(file)|\(tunables.buildOptions)"
        if let p = programs[key] { return p }
        let text = try source(of: file)
        var code: cl_int = 0
        let program: cl_program? = text.withCString { cstr in
            var ptr: UnsafePointer<CChar>? = cstr
            var length = strlen(cstr)
            return clCreateProgramWithSource(context, 1, &ptr, &length, &code)
        }
        guard let program, code == CL_SUCCESS else {
            throw .openCL(call: "clCreateProgramWithSource", code: code, detail: "\(file).cl")
        }
        var dev: cl_device_id? = device
        let built = clBuildProgram(program, 1, &dev, tunables.buildOptions, nil, nil)
        if built != CL_SUCCESS {
            let log = buildLog(program)
            clReleaseProgram(program)
            if built == CL_BUILD_PROGRAM_FAILURE { throw .kernelBuild(file: file, device: info.name, log: log) }
            throw .openCL(call: "clBuildProgram", code: built, detail: "\(file).cl with \(tunables.buildOptions): \(log)")
        }
        programs[key] = program
        return program
    }

    private func buildLog(_ program: cl_program) -> String {
        var size = 0
        clGetProgramBuildInfo(program, device, cl_program_build_info(CL_PROGRAM_BUILD_LOG), 0, nil, &size)
        var bytes = [CChar](repeating: 0, count: size + 1)
        clGetProgramBuildInfo(program, device, cl_program_build_info(CL_PROGRAM_BUILD_LOG), size, &bytes, nil)
        return decodeCString(bytes)
    }

    /// An argument of a kernel launch. Buffers are held by the argument list, so a temporary
    /// buffer stays alive until its `clSetKernelArg`; after that, OpenCL itself keeps a
    /// released buffer until the queued commands using it have finished.
    enum Arg {
        case buffer(DeviceBuffer)
        case int(Int)
        case float(Float)
    }

    /// Sets the arguments and enqueues `name` over `global` (rounded up to multiples of
    /// `local` when given).
    func launch(
        _ name: String, in file: String, _ tunables: KernelTunables, global: [Int], local: [Int]?, _ args: [Arg]
    ) throws(SheafError) {
        lock.lock()
        defer { lock.unlock() }
        let k = try kernel(name, in: file, tunables)
        for (i, arg) in args.enumerated() {
            let code: cl_int
            switch arg {
            case .buffer(let b):
                guard let storage = b.storage as? CLStorage else {
                    throw .invalidArgument(op: name, detail: "argument \(i) is not an OpenCL buffer")
                }
                var v: cl_mem? = storage.mem
                code = clSetKernelArg(k, cl_uint(i), MemoryLayout<cl_mem>.size, &v)
            case .int(let n):
                guard let n32 = Int32(exactly: n) else {
                    throw .invalidArgument(op: name, detail: "argument \(i) = \(n) does not fit in 32 bits")
                }
                var v = n32
                code = clSetKernelArg(k, cl_uint(i), 4, &v)
            case .float(let f):
                var v = f
                code = clSetKernelArg(k, cl_uint(i), 4, &v)
            }
            try clCheck(code, "clSetKernelArg", "\(name) argument \(i)")
        }
        var g = global
        if let local { for d in g.indices { g[d] = (g[d] + local[d] - 1) / local[d] * local[d] } }
        if g.contains(0) { return }
        let code: cl_int =
            if var l = local {
                clEnqueueNDRangeKernel(queue, k, cl_uint(g.count), nil, &g, &l, 0, nil, nil)
            } else {
                clEnqueueNDRangeKernel(queue, k, cl_uint(g.count), nil, &g, nil, 0, nil, nil)
            }
        try clCheck(code, "clEnqueueNDRangeKernel", "\(name) global \(g) local \(local.map { "\($0)" } ?? "auto")")
    }

    func finish() throws(SheafError) {
        try clCheck(clFinish(queue), "clFinish", info.name)
    }
}

/// A buffer's `cl_mem`, released with it.
final class CLStorage: @unchecked Sendable {
    let mem: cl_mem
    init(_ mem: cl_mem) { self.mem = mem }
    deinit { clReleaseMemObject(mem) }
}

/// A NUL-terminated C string held in a `[CChar]`, as UTF-8 (invalid bytes replaced).
func decodeCString(_ bytes: [CChar]) -> String {
    String(decoding: bytes.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
