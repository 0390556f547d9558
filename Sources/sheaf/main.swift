import SheafBackend
import SheafCore
let ref = ReferenceBackend()
for be: any Backend in [CPUBackend(), try! OpenCLBackend()] {
  for r in Parity.quickSuite(be, ref) { print(r.backend, r.op, r.shape, r.error, r.passed ? "PASS" : "FAIL " + r.failure) }
}
