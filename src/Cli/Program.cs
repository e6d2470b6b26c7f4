using System;
using EmaGen.Cli;

return CliApp.Run(args, Console.Out, Console.Error);
