# Shared by gpu_check.sh and gpu_suite.sh (sourced, never run): the checks of their environment settings.

# check_settings SCRIPT VAR...: DEVICE must be cuda or cpu and each named variable (lower-case, read from the
# caller's scope) a whole number; otherwise one line naming the setting, and exit status 2.
check_settings() {
    local script=$1 name
    shift
    case $device in
        cuda | cpu) ;;
        *) echo "$script: error: DEVICE=$device is not supported; use cuda or cpu" >&2; exit 2 ;;
    esac
    for name in "$@"; do
        if ! [[ ${!name} =~ ^[0-9]+$ ]]; then
            echo "$script: error: ${name^^}=${!name} must be a whole number" >&2
            exit 2
        fi
    done
}
