{ _agentsh_verbose=; case $- in *v*) set +v; _agentsh_verbose=1 ;; esac; } 2>/dev/null
# agentsh: the startup file a governed non-interactive bash reads through BASH_ENV
# (ARCHITECTURE §1 "builtins"; the frontend injects BASH_ENV after the env filter removed
# the caller's). It disables bash builtins that act without exec(2): exec supervision and
# the command rules only ever see programs that are executed, never a builtin.
#
#   kill     signals any process of the same uid (the supervisor, the proxy, the agent)
#            without an exec. Disabled, `kill` resolves on PATH to /usr/bin/kill, an exec
#            that exec supervision (issue 3) and the command rules judge like any command.
#   ulimit   raises soft limits up to the hard ones the operator's resource_limits left
#            (core dumps, file size, number of processes).
#   umask    `umask 000` makes every file the command creates world-writable.
#   builtin  both call a builtin past a shell function of the same name, so an operator's
#   command  wrapper function could be skipped. Neither reaches a builtin that is disabled
#            here (tested); they are disabled as in the Go agentsh. Note that `command -v`
#            stops working: `type -P name` prints an executable's path, `hash name` /
#            `hash -t name` still work, `type -t name` says what a name is.
#   enable   would re-enable everything above, and `enable -f x.so` loads a shared object
#            into bash itself: code that never goes through exec. It is disabled last, as
#            the previous line still needs it; after that nothing can re-enable a builtin.
#
# Scope: bash's own builtins, in the governed shell that runs the agent's command line,
# and nowhere else: the file unsets BASH_ENV, so the scripts that command runs (pyenv
# shims, installers, `#!/bin/bash` tools, many of which use `command -v`) keep every
# builtin. They run inside the exec-supervised tree, where every exec is checked and
# signals outside the tree are refused by the supervisor; other shells' builtins
# (`sh -c 'kill 1'` in dash) and direct system calls (python's os.kill) are likewise the
# kernel layers' job.
#
# Ordering and invariants:
# - Line 1 must stay first and alone: under `bash -v` bash echoes each line of this file as
#   it reads it; turning -v off there limits that to one line, and -v is restored at the
#   end. Everything runs inside `{ ...; } 2>/dev/null`, so `bash -x` traces nothing here.
# - Nothing here prints, forks, or reads an unset variable (safe under `set -e -u`).
# - Only bash runs the middle block: BASH_VERSION is set (bash sets it itself, overriding
#   any inherited value) and $'\x31' is "1" (ANSI-C quoting, which dash lacks: an exported
#   BASH_VERSION alone does not lead dash into bash syntax). sh/dash sourcing this file
#   run only the POSIX lines around that block.
# - A function named `enable` (exported from the environment: BASH_FUNC_enable%%) would
#   swallow `enable -n`. `unset` in POSIX mode is a special builtin, found before any
#   function, so it removes that function even if `unset` is itself a function. A plain
#   assignment to POSIXLY_CORRECT enters POSIX mode; unsetting it leaves it again (BASH_ENV
#   is never read in POSIX mode, so bash was not in it before). Leaving does not undo all
#   that entering did (bash 5.2 leaves inherit_errexit on and resets expand_aliases and
#   shift_verbose), so the five shopts POSIX mode touches are cleared and exactly those
#   listed in $BASHOPTS before (a variable bash maintains: reading it runs no command) are
#   set again. `shopt` is unset -f first for the same reason as `enable`.
# - `|| :` keeps a second sourcing (enable is gone by then) harmless under `set -e`; the
#   first cannot fail, every one of these builtins is compiled into every bash.
{
  case ${BASH_VERSION-}:$'\x31' in
    ?*:1)
      case :${SHELLOPTS-}: in
        *:posix:*) unset -f enable ;;
        *)
          _agentsh_shopts=${BASHOPTS-}
          POSIXLY_CORRECT=y
          unset -f enable shopt
          unset POSIXLY_CORRECT
          shopt -u inherit_errexit sourcepath interactive_comments expand_aliases shift_verbose
          case $_agentsh_shopts in ?*) shopt -s ${_agentsh_shopts//:/ } ;; esac
          unset _agentsh_shopts
          ;;
      esac
      enable -n kill ulimit umask builtin command || :
      enable -n enable || :
      ;;
  esac
  unset BASH_ENV || :
  case $_agentsh_verbose in 1) set -v ;; esac
  unset _agentsh_verbose
} 2>/dev/null
