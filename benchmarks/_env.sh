# Shared by gpu_check.sh and gpu_suite.sh (sourced, never run): their environment settings, read and checked.

# read_settings SCRIPT name=DEFAULT...: sets each lower-case variable from the environment variable of the same
# name in upper case (OUT for out), else from its default. A setting whose default is a whole number must be
# one, and DEVICE must be cuda or cpu; otherwise one line naming the setting, and exit status 2.
read_settings() {
    local script=$1 pair name value
    shift
    for pair in "$@"; do
        name=${pair%%=*}
        value=${pair#*=}
        local upper=${name^^}
        value=${!upper:-$value}
        if [[ ${pair#*=} =~ ^[0-9]+$ ]] && ! [[ $value =~ ^[0-9]+$ ]]; then
            echo "$script: error: $upper=$value must be a whole number" >&2
            exit 2
        fi
        printf -v "$name" '%s' "$value"
    done
    case ${device:-cuda} in
        cuda | cpu) ;;
        *) echo "$script: error: DEVICE=$device is not supported; use cuda or cpu" >&2; exit 2 ;;
    esac
    export PYTHONUNBUFFERED=1
}
