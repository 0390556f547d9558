import Foundation
import SheafCore

// The CLI's top level: dispatch, and turn every error into one line and a non-zero exit.
Env.quietOpenBLASThreads()
let args = Array(CommandLine.arguments.dropFirst())
let status: Int32
do {
    switch args.first {
    case nil, "help", "--help", "-h":
        switch args.dropFirst().first {
        case "doctor": print(doctorHelp)
        case "bench": print(benchHelp)
        case "compress": print(compressHelp)
        case "inspect": print(inspectHelp)
        case "convert": print(convertHelp)
        case "tokenize": print(tokenizeHelp)
        case "eval": print(evalHelp)
        case "generate": print(generateHelp)
        case "calibrate": print(calibrateHelp)
        case "export": print(exportHelp)
        case "sweep": print(sweepHelp)
        default: print(mainHelp)
        }
        status = 0
    case "--version", "version":
        print("sheaf \(version)")
        status = 0
    case "doctor": status = try Commands.doctor(Array(args.dropFirst()))
    case "bench": status = try Commands.bench(Array(args.dropFirst()))
    case "compress": status = try CompressCommand.run(Array(args.dropFirst()))
    case "export": status = try ExportCommand.run(Array(args.dropFirst()))
    case "sweep": status = try SweepCommand.run(Array(args.dropFirst()))
    case "inspect": status = try ModelCommands.inspect(Array(args.dropFirst()))
    case "convert": status = try ModelCommands.convert(Array(args.dropFirst()))
    case "tokenize": status = try ModelCommands.tokenize(Array(args.dropFirst()))
    case "eval": status = try EvalCommand.run(Array(args.dropFirst()))
    case "generate": status = try GenerateCommand.run(Array(args.dropFirst()))
    case "calibrate": status = try CalibrateCommand.run(Array(args.dropFirst()))
    case let other?:
        throw UsageError(description: "unknown command '\(other)'")
    }
} catch let error as UsageError {
    note("sheaf: error: \(oneLine(error.description)) (see 'sheaf --help')")
    status = 2
} catch let error as SheafError {
    note("sheaf: error: \(oneLine(error.description))")
    status = 1
} catch {
    note("sheaf: error: \(oneLine("\(error)"))")
    status = 1
}
exit(status)
